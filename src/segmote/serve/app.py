"""The FastAPI app: the routes of docs/api.md over `SessionStore` and `Engine`.

Every expected failure answers `{"error": "..."}` with a 4xx status (validation errors too); an
unexpected one answers 500 with a one-line error and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from importlib.resources import files as package_files
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import segmote
from segmote.errors import InputError, SegmoteError
from segmote.io import LabelInfo, write_label
from segmote.io.finite import finite_image
from segmote.serve.config import ServeConfig
from segmote.serve.engine import Engine, SegmentRequest
from segmote.serve.errors import ApiError, not_found
from segmote.serve.files import list_folder, read_upload, resolve_under, upload_name
from segmote.serve.images import image_info, label_png, slice_pixels
from segmote.serve.security import Guard
from segmote.serve.session import ImageSession, SessionStore
from segmote.intensity import normalize_modality, parse_window

log = logging.getLogger("segmote.serve")
# the page's files (served from the package: the page needs no network)
STATIC = {"": ("index.html", "text/html"), "app.css": ("app.css", "text/css"),
          **{name: (name, "text/javascript") for name in ("view.js", "api.js", "app.js", "ui.js")}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentBody(_Body):
    slice: int = 0
    axis: int = 2
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float, int]] = Field(default_factory=list)
    text: str | None = None
    label: int | None = None
    name: str | None = None
    refine: bool = False
    propagate: bool = False


class AutoBody(_Body):
    slice: int | None = None
    axis: int = 2
    classes: list[str] | None = None


class OpenBody(_Body):
    path: str
    modality: str | None = None
    window: str | None = None


class ObjectBody(_Body):
    name: str = Field(min_length=1, max_length=200)


def create_app(config: ServeConfig, model: Any = None) -> Guard:
    """The app wrapped in its request guard (token, host, body size)."""
    if model is None:
        kw = {"engine": config.engine} if config.engine else {}
        model = segmote.load_model(config.backbone, config.checkpoint,
                                   adapter=config.adapter, device=config.device, **kw)
    store = SessionStore(config)
    engine = Engine(model, store.peek)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()  # stop the background encoder with the server

    app = FastAPI(title="segmote", version=segmote.__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.store, app.state.engine, app.state.config = store, engine, config
    _errors(app)
    _routes(app, config, store, engine)
    return Guard(app, config.token, int(config.max_upload_mb * 2**20))


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(SegmoteError)
    async def input_error(_: Request, err: SegmoteError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def crash(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"},
                            status_code=500)


def _open(store: SessionStore, engine: Engine, config: ServeConfig, read, name: str,
          modality: str | None, window: str | None) -> dict:
    """Read an image with `read()`, start its session, encode its first slice in the
    background. NaN / Inf are replaced as `segmote predict` replaces them (they turned whole
    slices to foreground); the warning comes back in the answer's "warnings"."""
    modality = normalize_modality(modality or None)
    parse_window(window or None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read()
        try:
            data = finite_image(data)
        except InputError as err:  # named by the upload's name, not our temporary copy
            raise InputError(str(err).replace(str(data.path), name)) from None
    notes = [str(w.message).replace(str(data.path), name) for w in caught]
    for note in notes:
        log.warning(note)
    if data.array.nbytes > config.max_image_mb * 2**20:
        raise ApiError(413, f"{name}: the image holds {data.array.nbytes / 2**20:.0f} MB, more "
                            f"than this server takes ({config.max_image_mb:g} MB)")
    from segmote.predict.volume import guess_modality

    session = ImageSession(store.new_id(), data, modality or guess_modality(data),
                           window or None, config, name)
    store.add(session)
    axis = 2
    k = session.depth(axis) // 2
    engine.prefetch(session, axis, k, config.prefetch)
    return {**image_info(session, engine.classes), **({"warnings": notes} if notes else {})}


def _routes(app: FastAPI, config: ServeConfig, store: SessionStore, engine: Engine) -> None:
    _image_routes(app, config, store, engine)
    _prompt_routes(app, config, store, engine)
    _label_routes(app, store)
    _static_routes(app)


def _image_routes(app: FastAPI, config: ServeConfig, store: SessionStore,
                  engine: Engine) -> None:
    @app.get("/api/health")
    def health() -> dict:
        model = engine.seg.model
        return {"status": "ok", "version": segmote.__version__, "backbone": config.backbone,
                "adapter": None if getattr(model, "adapter", None) is None else
                str(config.adapter), "sessions": len(store), "root": config.root is not None}

    @app.post("/api/images")
    def upload(file: UploadFile = File(...), modality: str = Form(""),
               window: str = Form("")) -> dict:
        local = upload_name(file.filename)
        with tempfile.TemporaryDirectory(prefix="segmote-upload-") as tmp:
            path = Path(tmp) / local
            with open(path, "wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            limit = int(config.max_upload_mb * 2**20)
            return _open(store, engine, config,
                         lambda: read_upload(path, file.filename or local, limit),
                         file.filename or local, modality, window)

    @app.get("/api/files")
    def browse(folder: str = "") -> dict:
        if config.root is None:
            raise ApiError(404, "this server has no root folder to open files from")
        return list_folder(config.root, folder)

    @app.post("/api/images/open")
    def open_file(body: OpenBody) -> dict:
        if config.root is None:
            raise ApiError(404, "this server has no root folder to open files from")
        path = resolve_under(config.root, body.path)
        return _open(store, engine, config, lambda: segmote.read_image(path), body.path,
                     body.modality, body.window)

    @app.get("/api/images/{sid}")
    def info(sid: str) -> dict:
        session = store.get(sid)
        return {**image_info(session, engine.classes), **session.summary()}

    @app.delete("/api/images/{sid}")
    def close(sid: str) -> dict:
        store.remove(sid)
        return {"closed": sid}


def _prompt_routes(app: FastAPI, config: ServeConfig, store: SessionStore,
                   engine: Engine) -> None:
    @app.get("/api/images/{sid}/slice")
    def pixels(sid: str, k: int = 0, axis: int = 2) -> Response:
        session = store.get(sid)
        body, headers = slice_pixels(session, axis, k)
        engine.prefetch(session, axis, k, config.prefetch)
        return Response(body, media_type="application/octet-stream", headers=headers)

    @app.post("/api/images/{sid}/segment")
    def segment(sid: str, body: SegmentBody) -> dict:
        session = store.get(sid)
        t0 = time.perf_counter()
        req = SegmentRequest(body.slice, body.axis, body.box, tuple(body.points), body.text,
                             body.label, body.name, body.refine, body.propagate)
        answer = engine.segment(session, req)
        session.last_used = time.monotonic()  # idle time counts from the answer
        return {**answer, "ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/api/images/{sid}/auto")
    def auto(sid: str, body: AutoBody) -> dict:
        session = store.get(sid)
        t0 = time.perf_counter()
        answer = engine.auto(session, body.classes, body.axis, body.slice)
        session.last_used = time.monotonic()
        return {**answer, "ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.get("/api/images/{sid}/progress")
    def progress(sid: str) -> dict:
        return {"progress": store.get(sid).progress}


def _label_routes(app: FastAPI, store: SessionStore) -> None:
    @app.get("/api/images/{sid}/labels")
    def labels_slice(sid: str, slice: int = 0, axis: int = 2, format: str = "png") -> Response:
        session = store.get(sid)
        with session.lock:
            view = np.ascontiguousarray(session.slice_labels(axis, slice))
        if format == "raw":
            h, w = view.shape
            return Response(view.astype("<u2").tobytes(), media_type="application/octet-stream",
                            headers={"X-Shape": f"{h},{w}", "X-Dtype": "uint16"})
        if format != "png":
            raise ApiError(400, f"format {format!r}: expected png or raw")
        return Response(label_png(view), media_type="image/png")

    @app.get("/api/images/{sid}/labels.nii.gz")
    def labels_nifti(sid: str) -> Response:
        return _download(store.get(sid), ".nii.gz", "application/gzip")

    @app.get("/api/images/{sid}/labels.png")
    def labels_png(sid: str) -> Response:
        return _download(store.get(sid), ".png", "image/png")

    @app.get("/api/images/{sid}/labels.dcm")
    def labels_dicom_seg(sid: str) -> Response:
        return _download(store.get(sid), ".dcm", "application/dicom")

    @app.post("/api/images/{sid}/undo")
    def undo(sid: str) -> dict:
        session = store.get(sid)
        with session.lock:
            return {"undone": session.undo(), **session.summary()}

    @app.post("/api/images/{sid}/redo")
    def redo(sid: str) -> dict:
        session = store.get(sid)
        with session.lock:
            return {"redone": session.redo(), **session.summary()}

    @app.patch("/api/images/{sid}/objects/{label}")
    def rename(sid: str, label: int, body: ObjectBody) -> dict:
        session = store.get(sid)
        with session.lock:
            return session.rename(label, body.name).as_dict()

    @app.delete("/api/images/{sid}/objects/{label}")
    def remove(sid: str, label: int) -> dict:
        session = store.get(sid)
        with session.lock:
            session.remove_object(label)
            return session.summary()


def _download(session: ImageSession, ending: str, media: str) -> Response:
    """The whole label map in the input's geometry, written by the product's writer: NIfTI for
    a volume, PNG for a 2-D image, DICOM-SEG (segments named after the objects) for a DICOM
    volume."""
    endings = (".nii.gz", ".dcm") if session.data.format == "dicom" and session.is_volume \
        else (".nii.gz",) if session.is_volume else (".png",)
    if ending not in endings:
        raise not_found(f"labels{ending} (for this image: "
                        f"{' or '.join('labels' + e for e in endings)})")
    with session.lock:
        labels = session.labels.copy()
        info = LabelInfo({o.label: o.name for o in session.objects.values()})
    if labels.max(initial=0) < 256:
        labels = labels.astype(np.uint8)
    stem = Path(session.name).name.split(".")[0] or "image"
    with tempfile.TemporaryDirectory(prefix="segmote-labels-") as tmp:
        path = write_label(labels, session.data, Path(tmp) / f"{stem}_seg{ending}",
                           info if ending == ".dcm" else None)
        data = path.read_bytes()
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


def _static_routes(app: FastAPI) -> None:
    def page(name: str) -> Response:
        if name not in STATIC:
            raise not_found(name)
        file, media = STATIC[name]
        text = package_files("segmote.serve").joinpath("static", file).read_bytes()
        return Response(text, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/")
    def index() -> Response:
        return page("")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        return page(name)
