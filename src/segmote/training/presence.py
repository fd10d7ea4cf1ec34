"""Train the class presence head of a finished run's adapter (`segmote.modeling.presence`).

    segmote presence RUN_DIR --negatives other-modalities [--adapter FILE] [-o OUT]

The head learns, on the run's training slices (its split's "train" cases, the embedding cache),
whether each class the adapter knows may be in a slice. Present (1): the slice's label has a pixel
of the class. Absent (0), by `negatives`:
- "dataset-absent": the slice's dataset labels the class and the slice has none of it;
- "other-modalities": no dataset of the slice's modality labels the class
  (`segmote.training.loader.other_modality_classes`). Only right where the modalities image
  disjoint anatomy, as the default adapter's do: a CT "kidney" is not absent from an MR abdomen;
- "both".
Classes a slice's dataset does not label, of its own modality, are never asked: nobody knows.

The default adapter uses "other-modalities". In cross-validation over its training cases only
(`benchmarks/bench_presence_cv.py`: three folds, one training case per dataset left out in turn),
the head trained with "both" dropped 186 of 1,156 present AAL structures (their presence depends
on fine anatomy the head's image summary does not see) and still kept 797 of 3,252 same-dataset
absent ones, where the confidence threshold alone keeps held-out same-dataset false positives
below 1 %. Trained on present and other-modality queries only, it kept all 1,211 present queries
and dropped all 444 other-modality ones.

Its inputs are the frozen image embedding and the frozen text embedding, so nothing else of the
adapter changes: the file is written again with the same tensors plus the head's, and with the
"presence" header entry. The automatic mode then keeps a class's mask only when the head's
probability reaches `threshold` (0.5: the loss weighs each class's present and absent queries
equally, so 0.5 is the balanced decision; nothing is tuned on held-out data).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from segmote.errors import InputError

NEGATIVES = ("dataset-absent", "other-modalities", "both")
THRESHOLD = 0.5


@dataclasses.dataclass
class PresenceSettings:
    """negatives: which absent queries the head learns from (module doc, `NEGATIVES`); epochs
    over all (slice, class) queries in shuffled batches of `batch`; AdamW lr and weight decay;
    seed of the head's initialisation and the query order."""

    negatives: str = "dataset-absent"
    epochs: int = 30
    batch: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise InputError(f"presence negatives must be one of {', '.join(NEGATIVES)}, "
                             f"got {self.negatives!r}")


def slice_targets(samples: list[Any], classes: dict[str, dict[int, str]],
                  other: dict[str, list[str]], labels_of: Any) -> list[tuple[Any, dict[str, int]]]:
    """One (representative sample, {class name: 1 present / 0 absent}) per distinct slice.

    classes: dataset -> {label value: class name}; other: dataset -> class names absent from all
    its slices; labels_of(sample) -> the set of label values in its slice.
    """
    seen: dict[tuple, Any] = {}
    for s in samples:
        seen.setdefault((s.dataset, str(s.label), s.slice_index, s.axis), s)
    out = []
    for s in seen.values():
        values = labels_of(s)
        target: dict[str, int] = {}
        for value, name in classes.get(s.dataset, {}).items():
            target[name] = max(target.get(name, 0), int(value in values))
        for name in other.get(s.dataset, ()):
            target.setdefault(name, 0)
        out.append((s, target))
    return out


def learned_queries(items: list[tuple[Any, dict[str, int]]], other: dict[str, list[str]],
                    negatives: str) -> list[tuple[Any, dict[str, int]]]:
    """The `slice_targets` queries a head with these `negatives` learns from: every present
    one, and the absent ones of the chosen kind (`other`: the other-modality classes)."""
    def wanted(dataset: str, name: str, answer: int) -> bool:
        if answer or negatives == "both":
            return True
        is_other = name in other.get(dataset, ())
        return is_other if negatives == "other-modalities" else not is_other

    return [(s, {n: y for n, y in t.items() if wanted(s.dataset, n, y)}) for s, t in items]


def query_weights(targets: list[dict[str, int]]) -> dict[tuple[str, int], float]:
    """(class, answer) -> loss weight: each class weighs the same, and within a class its
    present and absent queries weigh half each (a class with one kind only: all of it).
    The weights of all queries sum to 1."""
    counts: dict[tuple[str, int], int] = {}
    for t in targets:
        for name, y in t.items():
            counts[(name, y)] = counts.get((name, y), 0) + 1
    names = {n for n, _ in counts}
    kinds = {n: sum((n, y) in counts for y in (0, 1)) for n in names}
    return {k: 1.0 / (len(names) * kinds[k[0]] * c) for k, c in counts.items()}


def query_table(items: list[tuple[Any, dict[str, int]]], summaries: list[Any],
                texts: dict[str, Any]) -> tuple[Any, Any, Any, list[tuple[int, str]]]:
    """Every (slice, class) query as rows: summaries (Q, 2 D), texts (Q, text_dim), answers (Q,)
    and their (slice number, class) keys."""
    import torch

    keys = [(i, n) for i, (_, t) in enumerate(items) for n in sorted(t)]
    x = torch.stack([summaries[i] for i, _ in keys]).float()
    t = torch.stack([texts[n] for _, n in keys]).float()
    y = torch.tensor([float(items[i][1][n]) for i, n in keys])
    return x, t, y, keys


def fit_presence(head: Any, items: list[tuple[Any, dict[str, int]]], summaries: list[Any],
                 texts: dict[str, Any], settings: PresenceSettings) -> list[float]:
    """Train `head` (a `PresenceHead`) on slices `items` whose `image_summary` rows are
    `summaries`, with class-balanced weighted BCE. Returns the weighted loss per epoch."""
    import torch
    import torch.nn.functional as F

    x, t, y, keys = query_table(items, summaries, texts)
    weights = query_weights([target for _, target in items])
    w = torch.tensor([weights[(n, items[i][1][n])] for i, n in keys])
    dev = next(head.parameters()).device
    x, t, y, w = x.to(dev), t.to(dev), y.to(dev), w.to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    history = []
    head.train()
    for _ in range(settings.epochs):
        total = 0.0
        for b in torch.randperm(len(y), generator=gen).split(settings.batch):
            b = b.to(dev)
            bce = F.binary_cross_entropy_with_logits(head(x[b], t[b]), y[b], reduction="none")
            # each batch's weighted mean, so a step's size does not depend on its classes' shares
            loss = (w[b] * bce).sum() / w[b].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float((w[b] * bce).sum().detach())
        history.append(round(total, 5))
    head.eval()
    return history


def presence_counts(head: Any, items: list[tuple[Any, dict[str, int]]], summaries: list[Any],
                    texts: dict[str, Any]) -> dict[str, int]:
    """Present queries kept and absent queries kept (probability >= THRESHOLD)."""
    import torch

    x, t, y, _ = query_table(items, summaries, texts)
    with torch.inference_mode():
        dev = next(head.parameters()).device
        keep = (torch.sigmoid(head(x.to(dev), t.to(dev))) >= THRESHOLD).cpu()
    present = y > 0
    return {"present": int(present.sum()), "present_kept": int((keep & present).sum()),
            "absent": int((~present).sum()), "absent_kept": int((keep & ~present).sum())}


def add_presence_head(model: Any, seed: int) -> Any:
    """Give `model` a fresh presence head (its MoTE config says so from now on); returns it."""
    import torch

    from segmote.modeling.presence import PresenceHead

    if model.config.text_dim is None:
        raise InputError("a presence head needs an adapter trained with text prompts")
    torch.manual_seed(seed)
    config = dataclasses.replace(model.config, presence=True)
    model.config = model.adapter.config = config
    model.adapter.presence = PresenceHead(model.embed_dim, config.text_dim).to(model.device)
    return model.adapter.presence


def train_presence(run_dir: str | Path, negatives: str, adapter: str | Path | None = None,
                   out: str | Path | None = None, device: str | None = None,
                   settings: PresenceSettings | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Train a presence head for `adapter` (default RUN_DIR/adapter_latest.safetensors) on
    RUN_DIR's training slices and write the adapter with it to `out` (default: over `adapter`,
    atomically). negatives: `NEGATIVES`. Returns the "presence" header entry."""
    import torch

    from segmote.adapter import read_adapter_card, resave_adapter
    from segmote.build import load_model
    from segmote.data.cache import EmbeddingCache
    from segmote.modeling.presence import image_summary
    from segmote.training import distributed as ddp
    from segmote.training.config import load_config
    from segmote.training.loader import other_modality_classes
    from segmote.training.run_data import cache_root, class_table, class_texts, load_run_data

    settings = dataclasses.replace(settings or PresenceSettings(), negatives=negatives)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "split.json").is_file():
        raise InputError(f"{run_dir}: not a training run (no config.yaml / split.json)")
    adapter = Path(adapter) if adapter else run_dir / "adapter_latest.safetensors"
    out = Path(out) if out else adapter
    cfg = load_config(run_dir / "config.yaml")
    info = ddp.DistInfo(0, 1, 0, torch.device(device or "cpu"))
    _, _, train, val = load_run_data(cfg, [Path(d) for d in cfg.data.folders], run_dir, True,
                                     info)
    model = load_model(cfg.model.backbone, adapter=adapter, device=info.device)
    if model.adapter.text is None:
        raise InputError(f"{adapter}: not trained with text prompts: no class to detect")
    start = time.perf_counter()
    head = add_presence_head(model, settings.seed)
    names = sorted(read_adapter_card(adapter).vocabulary or {s.class_name for s in train})
    texts, _ = class_texts(cfg, names)
    other = other_modality_classes(train + val) if settings.negatives != "dataset-absent" \
        else {}
    cache = EmbeddingCache(cache_root(cfg), model,
                           f"{cfg.model.backbone}-{model.backbone_sha256[:16]}", cfg.data.window)
    cache.build(train, progress=progress)
    summary_of: dict[int, Any] = {}

    def labels_of(s: Any) -> set[int]:
        cached = cache.get(s)
        summary_of[id(s)] = image_summary(cached.image_embedding[None])[0]
        return set(torch.unique(cached.label).tolist())

    items = [(s, {n: y for n, y in t.items() if n in texts})
             for s, t in slice_targets(train, class_table(train + val), other, labels_of)]
    items = [(s, t) for s, t in learned_queries(items, other, settings.negatives) if t]
    if not items or not any(0 in t.values() for _, t in items):
        hint = "every slice holds every class of its dataset" \
            if settings.negatives == "dataset-absent" else "one modality only"
        raise InputError(f"{run_dir}: no absent-class query to learn from with negatives "
                         f"{settings.negatives!r} ({hint})")
    summaries = [summary_of[id(s)] for s, _ in items]
    history = fit_presence(head, items, summaries, texts, settings)
    entry = {"threshold": THRESHOLD, "slices": len(items), **dataclasses.asdict(settings),
             "loss": history, "training_counts": presence_counts(head, items, summaries, texts),
             "seconds": round(time.perf_counter() - start, 1)}
    resave_adapter(model, adapter, out, {"presence": entry})
    return entry
