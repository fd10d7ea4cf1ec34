"""The model behind the server: a Segmenter for requests and a background encoder.

Requests share one Segmenter (its features are per-call state), so every use of it holds
`Engine.lock`. Neighbouring slices are encoded by a second Segmenter over the same frozen model
in a background thread that takes no lock: a prompt never waits for a prefetch (it only shares
the CPU with it), and a prompt for the very slice being prefetched waits for that encoding
instead of repeating it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from segmote.predict.segmenter import Segmenter
from segmote.serve.errors import ApiError
from segmote.serve.session import ImageSession, SegObject
from segmote.slicing import set_volume_slice


@dataclass(frozen=True)
class SegmentRequest:
    """One prompt on slice `k` along `axis` (see `segmote.serve.session` for coordinates).

    box: (x0, y0, x1, y1); points: [(x, y, label)] with label 1 foreground, 0 background;
    text: a class name (alone: prompt-free segmentation of that class on the slice; beside a box
    or points: one more prompt). label: the object to (re)draw, default a new one. refine: the
    object's previous low-res logits on this slice go in as the mask prompt. propagate: carry
    the object through the volume from this key slice (`segmote.predict.propagation`)."""

    k: int
    axis: int = 2
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, int], ...] = ()
    text: str | None = None
    label: int | None = None
    name: str | None = None
    refine: bool = False
    propagate: bool = False


class Engine:
    """Owns the Segmenter; `lookup(session id)` finds sessions for the background encoder."""

    def __init__(self, model: nn.Module, lookup: Callable[[str], ImageSession | None]) -> None:
        self.seg = Segmenter(model)
        self._background = Segmenter(model)  # inference only reads the model's weights
        self.lock = threading.RLock()
        self._lookup = lookup
        self._waiting = 0  # requests waiting for or holding the lock
        self._queue: deque[tuple[str, int, int]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._encoding: tuple[str, int, int] | None = None  # the prefetch in progress
        self._thread = threading.Thread(target=self._encode_loop, name="segmote-prefetch",
                                        daemon=True)
        self._thread.start()

    @property
    def classes(self) -> list[str]:
        return self.seg.vocabulary if self.seg.takes_text else []

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # -- encoding --------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self) -> Iterator[Segmenter]:
        """Hold the request Segmenter; no new prefetch starts while a request waits or runs."""
        with self._cond:
            self._waiting += 1
        try:
            with self.lock:
                yield self.seg
        finally:
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()

    def select(self, session: ImageSession, axis: int, k: int) -> bool:
        """Point the request Segmenter at slice k (encoding it unless cached); hold `lock`.
        Returns whether it had to be encoded."""
        image = session.slice_image(axis, k)
        with self._cond:  # the slice is being prefetched: wait for it rather than redo it
            while self._encoding == (session.id, axis, k):
                self._cond.wait(0.05)
        feats = session.cache.get((axis, k))
        if feats is None:
            self.seg.set_image(image, modality=session.modality, window=session.window,
                               valid=session.slice_valid(axis, k))
            session.cache.put((axis, k), self.seg.features)
            return True
        self.seg.set_features(feats, image.shape[:2])
        return False

    def prefetch(self, session: ImageSession, axis: int, k: int, radius: int) -> None:
        """Encode slice k, then its neighbours out to `radius`, in the background; replaces
        what was queued before (the user moved on)."""
        depth = session.depth(axis)
        order = [k] + [k + s * d for d in range(1, radius + 1) for s in (1, -1)]
        jobs = [(session.id, axis, j) for j in order if 0 <= j < depth
                and (axis, j) not in session.cache]
        with self._cond:
            self._queue.clear()
            self._queue.extend(jobs)
            self._cond.notify_all()

    def idle(self, timeout: float = 120.0) -> bool:
        """Wait until the background queue is empty (tests, the benchmark)."""
        end = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._encoding) and time.monotonic() < end:
                self._cond.wait(0.05)
            return not self._queue

    def _encode_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._queue or self._waiting):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                sid, axis, k = self._queue.popleft()
                self._encoding = (sid, axis, k)
            try:
                session = self._lookup(sid)
                if session is not None and (axis, k) not in session.cache:
                    seg = self._background
                    seg.set_image(session.slice_image(axis, k), modality=session.modality,
                                  window=session.window, valid=session.slice_valid(axis, k))
                    session.cache.put((axis, k), seg.features)
                    seg.reset_image()
            except Exception:  # noqa: BLE001 - a failed prefetch is redone by the request
                pass
            finally:
                with self._cond:
                    self._encoding = None
                    self._cond.notify_all()

    # -- prompts ---------------------------------------------------------------------------
    def segment(self, session: ImageSession, req: SegmentRequest) -> dict:
        """Decode one prompt on its slice (optionally propagated) and draw it into the label
        map. Returns the API's answer: label, name, score, slices, found, encoded (the slice
        was not cached: the time includes its encoder pass)."""
        session.check_slice(req.axis, req.k)
        if req.box is None and not req.points and not req.text:
            raise ApiError(400, "give a box, points or text")
        if req.label is not None and not 0 < req.label < 65536:
            raise ApiError(400, f"label {req.label}: must be between 1 and 65535")
        label = req.label if req.label is not None else session.next_label()
        old = session.objects.get(label)
        name = req.name or (old.name if old else None) or req.text or f"object {label}"
        kw: dict[str, Any] = {}
        if req.box is not None:
            kw["box"] = req.box
        if req.points:
            kw["points"] = [p[:2] for p in req.points]
            kw["labels"] = [int(p[2]) for p in req.points]
        if req.text:
            kw["text"] = req.text
        with self.using() as seg, session.lock:
            encoded = self.select(session, req.axis, req.k)
            if req.box is None and not req.points:
                return {**self._text_only(session, req, label, name), "encoded": encoded}
            if req.refine and (label, req.axis, req.k) in session.lowres:
                kw["mask_input"] = session.lowres[(label, req.axis, req.k)]
            if req.propagate:
                obj = SegObject(label, name, None)
                return {**self._propagate(session, req, obj, kw), "encoded": encoded}
            pred = seg.predict(**kw)
            obj = SegObject(label, name, round(float(pred.score), 4))
            session.paint_slice(obj, req.axis, req.k, pred.mask, pred.lowres_logits)
        return {**obj.as_dict(), "slices": [req.k], "found": bool(pred.mask.any()),
                "encoded": encoded}

    def _text_only(self, session: ImageSession, req: SegmentRequest, label: int,
                   name: str) -> dict:
        """A class name alone: prompt-free segmentation of that class on the slice, kept only
        above the adapter's calibrated confidence and presence thresholds."""
        auto = self.seg.predict_auto([req.text])
        obj = SegObject(label, name, round(auto.confidence[req.text], 4))
        found = bool(auto.kept[req.text])
        if found:
            session.paint_slice(obj, req.axis, req.k, auto.label_map > 0)
        return {**obj.as_dict(), "label": label if found else None, "slices":
                [req.k] if found else [], "found": found}

    def _propagate(self, session: ImageSession, req: SegmentRequest, obj: SegObject,
                   kw: dict) -> dict:
        """The object through the volume from its key slice (`segmote.predict.propagation`),
        every slice's features from the session's cache (encoded and cached when missing)."""
        from segmote.predict.propagation import propagate

        if not session.is_volume:
            raise ApiError(400, "propagate needs a volume (this is a 2-D image)")
        depth, done = session.depth(req.axis), []

        def set_slice(k: int) -> None:
            session.progress = {"task": "propagation", "done": len(done), "total": depth}
            done.append(k)
            self.select(session, req.axis, k)

        first = {key: kw[key] for key in ("box", "points", "labels", "mask_input", "text")
                 if key in kw}
        try:
            # a one-slice prompt, followed as `segmote predict --propagate` follows it: inside
            # its key box, with the growth and depth limits of `PropagationConfig`
            result = propagate(self.seg, set_slice, session.labels.shape, req.k, first,
                               axis=req.axis, spacing=session.data.spacing)
        finally:
            session.progress = None
        scores = {int(k): round(float(v), 4) for k, v in result.scores.items()}
        obj = SegObject(obj.label, obj.name, scores.get(req.k))  # the key slice's IoU
        session.paint_volume(obj, np.asarray(result.mask, bool))
        return {**obj.as_dict(), "slices": [int(k) for k in result.slices], "scores": scores,
                "found": bool(result.slices)}

    def auto(self, session: ImageSession, classes: list[str] | None, axis: int,
             k: int | None) -> dict:
        """Prompt-free segmentation of `classes` (default: the adapter's classes for the
        session's modality, else all) on slice k, or every slice when k is None; each class
        found becomes a new object. One undo step."""
        if not (self.seg.prompt_free and self.seg.takes_text):
            raise ApiError(400, "automatic mode needs an adapter trained with PPT and text")
        names = list(classes or self.seg.card.classes_for_modality(session.modality)
                     or self.seg.vocabulary)
        ks = [k] if k is not None else list(range(session.depth(axis)))
        for j in ks:
            session.check_slice(axis, j)
        found = np.zeros(session.labels.shape, np.uint16)
        confidence: dict[str, float] = {}
        with self.using() as seg, session.lock:
            for done, j in enumerate(ks):
                session.progress = {"task": "automatic", "done": done, "total": len(ks)}
                self.select(session, axis, j)
                pred = seg.predict_auto(names)
                for n in pred.classes:
                    if pred.kept[n]:
                        confidence[n] = max(confidence.get(n, 0.0), pred.confidence[n])
                if session.is_volume:
                    set_volume_slice(found, j, axis, pred.label_map)
                else:
                    found[...] = pred.label_map
            session.progress = None
            kept = [n for n in names if n in confidence]
            objects, label = [], session.next_label()
            for n in kept:
                while label in session.objects:
                    label += 1
                objects.append(SegObject(label, n, round(confidence[n], 4)))
                label += 1
            remap = np.zeros(len(names) + 1, np.uint16)
            for i, n in enumerate(kept):
                remap[names.index(n) + 1] = i + 1
            if objects:
                session.paint_classes(remap[found], objects)
        return {"objects": [o.as_dict() for o in objects], "classes": names,
                "slices": ks}
