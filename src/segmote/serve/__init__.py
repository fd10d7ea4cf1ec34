"""`segmote serve`: a local web app and the HTTP API behind it.

    from segmote.serve import ServeConfig, create_app
    app = create_app(ServeConfig(root="~/scans"))      # a FastAPI app; run it with uvicorn

Layout: `config` (the typed settings), `cache` (an LRU of encoded slices bounded in bytes),
`session` (one opened image: its label map, objects, undo / redo), `engine` (the model, its lock
and the background encoder of neighbouring slices), `files` (uploads and root-folder confinement),
`security` (token, host and upload-size checks), `app` (the routes) and `static/` (the page,
plain canvas code, no network needed). The API is documented in docs/api.md.
"""

from __future__ import annotations

from segmote.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(config: ServeConfig, model=None):  # noqa: ANN001, ANN201 (lazy FastAPI import)
    """The FastAPI app for `config`; `model` (a loaded segmote model) skips loading one."""
    from segmote.serve.app import create_app as create

    return create(config, model)
