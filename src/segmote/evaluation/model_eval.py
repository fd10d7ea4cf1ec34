"""`evaluate_models`: run models on a dataset's held-out split under fixed prompt protocols and
compare them in one table (the engine of `segmote evaluate-model`).

Models are named "base" (the backbone alone), "default" (the shipped adapter), "new" (a fresh
adapter) or an adapter file. A SegMoTE model also returns the frozen base decoder's mask from the
same decode (bit-identical to the base model), so "base" costs no extra pass when an adapter is
evaluated too. Results carry what is needed to reproduce them: package version, backbone and
adapter sha256, the split's cases, the protocols and their seeds.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmote.errors import InputError, ParameterError
from segmote.outputs import written_together
from segmote.evaluation.prompted import (PROMPTS, TEXT_PROMPTS, Protocol, check_text_protocol,
                                         evaluate_samples, summarize_results)
from segmote.predict.segmenter import Segmenter

@dataclass
class ModelEvaluation:
    """What `evaluate_models` measured: per-sample rows and the summary per model."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]  # model -> prompt -> {"mean", "datasets": {...}}
    info: dict[str, Any]  # reproducibility metadata

    def to_json(self) -> str:
        return json.dumps({"info": self.info, "summary": self.summary}, indent=2) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        fields = ["model", "prompt", "dataset", "case", "slice", "class", "dice", "nsd", "hd95"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()

    def format_table(self) -> str:
        """Rows: dataset (n) per prompt; columns: models; last row the mean over datasets."""
        models = list(self.summary)
        lines = []
        for prompt in self.summary[models[0]]:
            head = f"{'prompt ' + prompt:40s} {'n':>6s} " + " ".join(f"{m[:14]:>14s}"
                                                                     for m in models)
            lines += [head, "-" * len(head)]
            datasets = self.summary[models[0]][prompt]["datasets"]
            for d, entry in datasets.items():
                lines.append(f"{d[:40]:40s} {entry['n']:6d} " + " ".join(
                    f"{self.summary[m][prompt]['datasets'][d]['dice']:14.4f}" for m in models))
            lines.append(f"{'mean over datasets':40s} {'':6s} " + " ".join(
                f"{self.summary[m][prompt]['mean']:14.4f}" for m in models))
            lines.append("")
        return "\n".join(lines)


def _check_request(models: list[str], part: str, text: list[str]) -> None:
    if not models:
        raise ParameterError("models", "give at least one {models} (base, default, new or an "
                             "adapter file)")
    if len(set(models)) != len(models):
        raise ParameterError("models", "a {models} is named twice")
    if part not in ("val", "train", "all"):
        raise ParameterError("part", f"{{part}} must be val, train or all, got {part!r}")
    if text and "base" in models:
        raise ParameterError("prompts", f"{{prompts}} {text[0]}: the base model takes no text; "
                             "compare adapters trained with text prompts (drop base)")


def _parse_prompts(prompts: list[str], seed: int, clicks: int, jitter: float) -> list[Protocol]:
    out = []
    for p in prompts:
        if p not in PROMPTS:
            raise ParameterError("prompts", f"{{prompts}} {p}: unknown; expected one of "
                                 f"{', '.join(PROMPTS)}")
        out.append(Protocol(p, seed=seed, clicks=clicks, jitter=jitter))
    return out


def _load(name: str, backbone: str, checkpoint: str | None, engine: str = "torch") -> Any:
    from segmote.build import load_model

    if name == "base":
        return load_model(backbone, checkpoint, adapter=None, engine=engine)
    if name not in ("default", "new") and not Path(name).is_file():
        raise InputError(f"{name}: adapter file not found (or use base, default, new)")
    return load_model(backbone, checkpoint, adapter=name, engine=engine)


def _targets(datasets: list, split: dict, part: str, in_2d: list[Protocol],
             in_3d: list[Protocol], axis: int, min_foreground: int,
             classes: list[str] | None, data_dirs: list) -> tuple[list, list]:
    """The slice samples of the 2-D protocols and the 3-D objects of the volume protocols."""
    from segmote.data.datasets import slice_samples
    from segmote.evaluation.volume_protocols import volume_cases

    parts = ("train", "val") if part == "all" else (part,)
    samples = [s for p in parts for s in slice_samples(datasets, split, part=p, axis=axis,
                                                        min_foreground=min_foreground).samples
               if classes is None or s.class_name in classes] if in_2d else []
    cases = volume_cases(datasets, split, parts, classes) if in_3d else []
    if in_2d and not samples:
        raise InputError(f"no {part} slice with >= {min_foreground} foreground pixels in "
                         f"{', '.join(map(str, data_dirs))}")
    if in_3d and not cases:
        raise ParameterError("prompts", f"{{prompts}} {in_3d[0].prompt} scores whole 3-D "
                             f"objects, but {', '.join(map(str, data_dirs))} holds no 3-D "
                             f"case ({part} part)")
    return samples, cases


def evaluate_models(models: list[str], data_dirs: list[str | Path], prompts: list[str],
                    split_path: str | Path | None = None, part: str = "val",
                    val_fraction: float = 0.2, split_seed: int = 0, seed: int = 0,
                    clicks: int = 3, jitter: float = 0.1, axis: int = 2,
                    min_foreground: int = 20, backbone: str = "litemedsam",
                    checkpoint: str | None = None, cache_dir: str | Path | None = None,
                    classes: list[str] | None = None, nsd_mm: float = 2.0,
                    engine: str = "torch") -> ModelEvaluation:
    """Evaluate `models` on the `part` ("val", "train" or "all") of the datasets' split.

    split_path: a split JSON (e.g. a training run's split.json); None draws the same split
        `segmote train` draws from val_fraction and split_seed.
    cache_dir: the embedding cache to read and fill (default: the one `segmote curate` and
        `segmote train` share, `segmote.data.cache.default_cache_dir`).
    classes: evaluate only these classes. nsd_mm: NSD tolerance of the 3-D protocols
        (`segmote.evaluation.volume_protocols`).
    engine: what runs the frozen encoder (`load_model(engine=...)`).
    """
    from segmote import __version__
    from segmote.build import DEFAULT_ADAPTER, resolve_weights
    from segmote.checkpoint import sha256_file
    from segmote.data.cache import EmbeddingCache, default_cache_dir
    from segmote.data.datasets import discover, load_split, make_split
    from segmote.evaluation.volume_protocols import PROMPTS_3D, evaluate_volumes

    protocols = _parse_prompts(prompts, seed, clicks, jitter)
    text = [p.prompt for p in protocols if p.prompt in TEXT_PROMPTS]
    _check_request(models, part, text)
    datasets = discover([Path(d) for d in data_dirs])
    split = load_split(Path(split_path)) if split_path else \
        make_split(datasets, val_fraction=val_fraction, seed=split_seed)
    in_3d = [p for p in protocols if p.prompt in PROMPTS_3D]
    in_2d = [p for p in protocols if p.prompt not in PROMPTS_3D]
    samples, cases = _targets(datasets, split, part, in_2d, in_3d, axis, min_foreground,
                              classes, data_dirs)
    weights, expected = resolve_weights(backbone, checkpoint)
    info: dict[str, Any] = {
        "segmote_version": __version__, "backbone": backbone,
        "backbone_sha256": expected or sha256_file(weights),
        "protocols": [p.to_dict() for p in protocols], "part": part,
        "split": {d: {k: v for k, v in e.items() if k in ("train", "val", "note")}
                  for d, e in split.items()},
        "axis": axis, "min_foreground": min_foreground, "n_samples": len(samples),
        "n_objects_3d": len(cases), "nsd_mm": nsd_mm, "classes": classes, "engine": engine,
        "models": {}}
    adapters = [m for m in models if m != "base"]
    results: dict[str, list] = {}
    loaded = {name: _load(name, backbone, checkpoint, engine) for name in adapters or ["base"]}
    for name, model in loaded.items():  # refuse before any work, naming the model
        for prompt in text:
            try:
                check_text_protocol(Segmenter(model), prompt)
            except InputError as err:
                raise ParameterError("models", f"{{models}} {name}: {err}") from None
    for name, model in loaded.items():
        if name != "base":
            path = DEFAULT_ADAPTER if name == "default" else name
            info["models"][name] = {"adapter_sha256": None if name == "new"
                                    else sha256_file(Path(path))}
        cache = EmbeddingCache(Path(cache_dir) if cache_dir else default_cache_dir(), model,
                               f"{backbone}-{info['backbone_sha256'][:16]}")
        results[name] = list(evaluate_samples(model, samples, in_2d, cache=cache)) + \
            list(evaluate_volumes(model, cases, in_3d, cache, axis=axis, nsd_mm=nsd_mm))
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    sources = [(m, "adapter") for m in adapters]
    if "base" in models:
        # a SegMoTE's base output is the base model's mask, from the same decode
        sources.insert(models.index("base"), (adapters[0] if adapters else "base", "base"))
    for source, output in sources:
        name = "base" if output == "base" else source
        picked = results[source]
        summary[name] = {p: s[output] for p, s in summarize_results(picked).items()}
        rows += [{"model": name, "prompt": r.prompt, "dataset": r.dataset, "case": r.case_id,
                  "slice": "" if r.slice_index is None else r.slice_index,
                  "class": r.class_name, "dice": f"{r.dice[output]:.6f}",
                  "nsd": "" if r.nsd is None else f"{r.nsd[output]:.6f}",
                  "hd95": "" if r.hd95 is None else f"{r.hd95[output]:.3f}"} for r in picked]
    summary = {m: summary[m] for m in models}
    return ModelEvaluation(rows, summary, info)


def output_paths(out: Path) -> tuple[Path, Path]:
    """OUT -> (OUT.json, OUT.csv), the files `write_outputs` writes."""
    out = Path(out)
    return out.with_suffix(".json"), out.with_suffix(".csv")


def write_outputs(evaluation: ModelEvaluation, out: Path) -> tuple[Path, Path]:
    """OUT.json (summary + metadata) and OUT.csv (per sample), written together: both or none."""
    json_path, csv_path = output_paths(out)
    with written_together([json_path, csv_path]) as (tmp_json, tmp_csv):
        tmp_json.write_text(evaluation.to_json(), encoding="utf-8")
        tmp_csv.write_text(evaluation.to_csv(), encoding="utf-8", newline="")
    return json_path, csv_path
