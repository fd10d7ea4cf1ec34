"""SegMoTE adapter files: the weights (`files`) and their typed header (`card.AdapterCard`)."""

from __future__ import annotations

from segmote.adapter.card import (FORMAT, FORMAT_VERSION, RESERVED_KEYS, AdapterCard, Calibration,
                                  PresenceInfo, TextInfo)
from segmote.adapter.files import (adapter_state_dict, attach_adapter, check_backbone,
                                   read_adapter_card, read_adapter_metadata, resave_adapter,
                                   rewrite_adapter_header, save_adapter)

__all__ = ["FORMAT", "FORMAT_VERSION", "RESERVED_KEYS", "AdapterCard", "Calibration",
           "PresenceInfo", "TextInfo", "adapter_state_dict", "attach_adapter", "check_backbone",
           "read_adapter_card", "read_adapter_metadata", "resave_adapter",
           "rewrite_adapter_header", "save_adapter"]
