"""The server's settings: one frozen dataclass, filled from flags by `segmote.cli.serve`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from segmote.errors import ParameterError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (the only hosts served without a token)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """host / port: where uvicorn listens. token: required on every request when set; a server
    on a host other than loopback always has one (`segmote.cli.serve` generates it).
    root: the folder the page may open files from (None: uploads only).
    max_upload_mb: largest accepted request body. max_image_mb: largest decoded image (a small
    compressed file can unpack to a huge array). cache_mb: encoded slices kept per session
    (LRU). undo_mb: undo / redo history kept per session. max_sessions: open images at once
    (the least recently used is closed beyond it). session_ttl_s: idle time before a session
    expires. prefetch: neighbouring slices encoded in the background on each side of the one
    shown. backbone / checkpoint / adapter / device / engine: the model, as `load_model` takes
    them (engine None: the library's default)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    root: Path | None = None
    max_upload_mb: float = 512.0
    max_image_mb: float = 2048.0
    cache_mb: float = 512.0
    undo_mb: float = 256.0
    max_sessions: int = 8
    session_ttl_s: float = 3600.0
    prefetch: int = 2
    backbone: str = "litemedsam"
    checkpoint: Path | None = None
    adapter: str | None = "default"
    device: str = "cpu"
    engine: str | None = None

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ParameterError("host", f"{{host}} {self.host}: a server reachable from other "
                                 "machines needs a token")
        if self.root is not None and not Path(self.root).is_dir():
            raise ParameterError("root", f"{{root}} {self.root}: not a folder")
        for name in ("max_upload_mb", "max_image_mb", "cache_mb", "undo_mb", "session_ttl_s"):
            if getattr(self, name) <= 0:
                raise ParameterError(name, f"{{{name}}}: must be positive")
        if self.max_sessions < 1:
            raise ParameterError("max_sessions", "{max_sessions}: must be at least 1")
        if self.prefetch < 0:
            raise ParameterError("prefetch", "{prefetch}: must be 0 or more")
