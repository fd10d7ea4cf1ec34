"""segmote: SegMoTE on frozen SAM-family backbones for medical image segmentation.

    import segmote
    model = segmote.load_model()            # LiteMedSAM + the shipped default adapter
    seg = segmote.Segmenter(model)
    seg.set_image(image, modality="CT")
    mask, score = seg.predict(box=(x0, y0, x1, y1))
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "Segmenter", "read_image", "write_label", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `import segmote` stays cheap; torch loads when a model is asked for
    if name == "load_model":
        from segmote.build import load_model
        return load_model
    if name == "Segmenter":
        from segmote.predict.segmenter import Segmenter
        return Segmenter
    if name in ("read_image", "write_label"):
        import segmote.io
        return getattr(segmote.io, name)
    raise AttributeError(f"module 'segmote' has no attribute {name!r}")
