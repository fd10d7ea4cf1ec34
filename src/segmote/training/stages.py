"""A second training stage on a trained adapter: `init_adapter` (load it into a fresh adapter
whose new text / PPT modules keep their initialisation) and the checks that refuse a file of
another shape with one line, before a run writes anything."""

from __future__ import annotations

from pathlib import Path

from segmote.errors import SegmoteError
from segmote.modeling.segmote import SegMoTE
from segmote.training.config import TrainConfig

NEW_PARTS = ("text", "ppt")  # adapter parts a second stage may add to a file without them

def check_initial_adapter(cfg: TrainConfig, text_dim: int | None = None) -> None:
    """Refuse (one-line CheckpointError) an `init_adapter` whose header does not fit `cfg`:
    another backbone or other MoTE settings (text_dim / ppt_queries may be added, not changed).
    Reads the header only, so a run can check it before writing anything."""
    from segmote.adapter import read_adapter_card
    from segmote.errors import CheckpointError
    from segmote.modeling.segmote import MoTEConfig

    path = Path(cfg.model.init_adapter)
    card = read_adapter_card(path)
    if card.backbone != cfg.model.backbone:
        raise CheckpointError(f"{path}: init_adapter was trained for backbone "
                              f"{card.backbone!r}, not {cfg.model.backbone!r}")
    try:
        if card.mote_config is None:
            raise KeyError("mote_config")
        stored = MoTEConfig.from_dict(card.mote_config).to_dict()
    except (KeyError, TypeError, SegmoteError) as err:
        raise CheckpointError(f"{path}: bad or missing mote_config in the header ({err})") \
            from None
    want = cfg.mote_config(text_dim).to_dict()
    differ = [k for k in sorted(want) if k not in ("text_dim", "ppt_queries", "balance_loss_weight",
                                                   "presence")
              and stored.get(k) != want[k]]
    differ += [k for k in ("text_dim", "ppt_queries")  # in the file: may not change
               if text_dim is not None and stored.get(k) and stored[k] != want[k]]
    if differ:
        got = ", ".join(f"{k} {stored.get(k)} (config: {want[k]})" for k in differ)
        raise CheckpointError(f"{path}: init_adapter has other MoTE settings: {got}")


def load_initial_adapter(model: SegMoTE, path: Path) -> None:
    """Load the adapter file at `path` into `model`'s fresh adapter (config `init_adapter`;
    `check_initial_adapter` has checked its header). Tensors the file lacks keep their
    initialisation, but only the text / PPT modules may be absent."""
    from segmote.adapter import check_backbone, read_adapter_card
    from segmote.checkpoint import load_strict, read_state_dict
    from segmote.errors import CheckpointError

    check_backbone(path, read_adapter_card(path), model.backbone, model.backbone_sha256)
    state = read_state_dict(path)
    own = model.adapter.state_dict()
    lacking = [k for k in sorted(own) if k not in state and k.split(".")[0] not in NEW_PARTS]
    if lacking:
        raise CheckpointError(f"{path}: init_adapter lacks {lacking[0]} (only text / PPT "
                              f"weights may be added)")
    # the new parts keep their initialisation; load_strict names any other misfit in one line
    fresh = {k: v for k, v in own.items() if k not in state}
    load_strict(model.adapter, {**state, **fresh}, path)
