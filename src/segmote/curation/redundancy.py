"""Near-duplicate removal on the frozen encoder's embeddings.

Each sample gets one unit vector built from its cached slice (`segmote.data.cache`):

    g  (256)    the image embedding averaged over the frame           what the slice shows
    s  (1024)   the embedding averaged over a 2 x 2 grid              where it shows it
    m  (256)    the embedding averaged inside the class mask          what the object looks like
    k  (256)    the mask's occupancy on a 16 x 16 grid of the frame   the object's shape and place

    v = [g/|g|, s/|s|, m/|m|, k/|k|] / 2        so cos(v_i, v_j) is the mean of the four cosines

Two samples of the same class are near-duplicates when cos(v_i, v_j) >= threshold (0.96) and
their masks agree: cos(k_i, k_j) >= mask_threshold (0.999 in `CurationConfig`). The image parts alone cannot tell a
re-saved noisy copy from a different slice: measured with LiteMedSAM on Colin27, a copy with
Gaussian noise (sigma 2 grey levels) scores 0.99 on g while slices 8 mm apart score up to 0.998;
only the mask part separates them (copies 1.0, slices 8 mm apart <= 0.984). Duplicate groups
are collapsed by non-maximum suppression in quality order: the best sample is kept and every
sample similar to a kept one is dropped as its duplicate. Unlike connected components, this
never chains a long run of gradually changing slices into one group: every kept sample is
below the threshold to every other kept sample, and every dropped one is within it of a kept one.

Neighbours are found by exact blockwise cosine similarity (one matrix product per block of rows)
up to `exact_limit` samples of a class, and above that by random-hyperplane LSH (approximate:
candidate pairs share a 16-bit code in one of 8 hash tables, then their exact cosine decides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from segmote.data.datasets import SliceSample

VECTOR_DIM = 256 + 1024 + 256 + 256
MASK_DIMS = 256  # the occupancy part k comes last


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def slice_vectors(embedding: torch.Tensor, label: torch.Tensor,
                  values: Sequence[int]) -> np.ndarray:
    """Vectors of the classes `values` on one cached slice.

    embedding: (C, h, w) image embedding; label: (4h, 4w) label map in the same padded frame
    (`CachedSlice.label`). Returns (len(values), 7C) float32 unit vectors for C = 256
    (`VECTOR_DIM`; in general C + 4C + C + 256).
    """
    emb = embedding.float()
    c, h, w = emb.shape
    g = emb.mean(dim=(1, 2))
    s = torch.nn.functional.adaptive_avg_pool2d(emb[None], 2)[0].reshape(-1)
    image_part = np.concatenate([_unit(g.numpy()), _unit(s.numpy())])
    masks = torch.stack([(label == v) for v in values]).float()[:, None]  # (n, 1, 4h, 4w)
    low = torch.nn.functional.adaptive_avg_pool2d(masks, (h, w))[:, 0]  # (n, h, w) coverage
    m = torch.einsum("nhw,chw->nc", low, emb) / low.sum(dim=(1, 2)).clamp_min(1e-6)[:, None]
    k = torch.nn.functional.adaptive_avg_pool2d(masks, 16).reshape(len(values), -1)
    out = np.concatenate([np.broadcast_to(image_part, (len(values), image_part.size)),
                          _unit(m.numpy()), _unit(k.numpy())], axis=1)
    return (out / 2.0).astype(np.float32)


def sample_vectors(cache, samples: Sequence[SliceSample],
                   progress: bool = False) -> np.ndarray:
    """(len(samples), D) vectors (D = `VECTOR_DIM` for 256-wide embeddings); each cache entry
    (one slice) is read once.

    cache: a built `segmote.data.cache.EmbeddingCache` (a missing entry is encoded on `get`)."""
    from tqdm.auto import tqdm

    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((str(s.image), str(s.label), s.slice_index, s.axis), []).append(i)
    out: np.ndarray | None = None
    for idx in tqdm(groups.values(), desc="embedding vectors", unit="slice",
                    disable=not progress):
        cached = cache.get(samples[idx[0]])
        v = slice_vectors(cached.image_embedding, cached.label,
                          [samples[i].class_value for i in idx])
        if out is None:
            out = np.zeros((len(samples), v.shape[1]), np.float32)
        out[idx] = v
    return out if out is not None else np.zeros((0, VECTOR_DIM), np.float32)


# ------------------------------------------------------------------ duplicate groups

Neighbours = Callable[[np.ndarray], list[np.ndarray]]  # rows -> neighbour indices of each row


def _gate(v: np.ndarray, mask_dims: int, mask_threshold: float):
    """(rows, cols) -> bool (b, n): the mask parts agree, cos of the last `mask_dims` dims
    (rescaled to a cosine of unit parts) >= mask_threshold; always True when mask_dims is 0."""
    if not mask_dims:
        return lambda rows, cols: True
    k = v[:, -mask_dims:]
    k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    return lambda rows, cols: (k[rows] @ k[cols].T) >= mask_threshold


def _exact_neighbours(v: np.ndarray, threshold: float, gate, block: int = 1024) -> Neighbours:
    everyone = np.arange(len(v))

    def fn(rows: np.ndarray) -> list[np.ndarray]:
        out = []
        for a in range(0, len(rows), block):
            part = rows[a:a + block]
            hit = (v[part] @ v.T >= threshold) & gate(part, everyone)  # (b, n)
            out += [np.flatnonzero(r) for r in hit]
        return out
    return fn


def _lsh_neighbours(v: np.ndarray, threshold: float, gate, seed: int, bits: int = 16,
                    tables: int = 8) -> Neighbours:
    """Approximate: candidates share a `bits`-bit sign code in any of `tables` tables.

    Two vectors at cosine c agree on one random-hyperplane bit with probability
    1 - arccos(c) / pi (0.95 at c = 0.99), so on all 16 bits of a table with 0.95^16 = 0.44 and
    in at least one of 8 tables with 1 - 0.56^8 = 0.99.
    """
    rng = np.random.default_rng(seed)
    weights = 1 << np.arange(bits, dtype=np.int64)
    codes = np.empty((tables, len(v)), np.int64)
    buckets: list[dict[int, np.ndarray]] = []
    for t in range(tables):
        planes = rng.standard_normal((v.shape[1], bits)).astype(np.float32)
        codes[t] = ((v @ planes) > 0).astype(np.int64) @ weights
        order = np.argsort(codes[t], kind="stable")
        keys, starts = np.unique(codes[t][order], return_index=True)
        buckets.append(dict(zip(keys.tolist(), np.split(order, starts[1:]))))

    def fn(rows: np.ndarray) -> list[np.ndarray]:
        out = []
        for r in rows.tolist():
            cand = np.unique(np.concatenate([buckets[t][int(codes[t, r])]
                                             for t in range(tables)]))
            ok = (v[cand] @ v[r] >= threshold) & np.ravel(gate(np.array([r]), cand))
            out.append(cand[ok])
        return out
    return fn


def _suppress(order: np.ndarray, neighbours: Neighbours, chunk: int = 256) -> np.ndarray:
    """Non-maximum suppression: walk `order` (best first); keep a sample unless a kept one is
    its neighbour. Returns dup_of (n,) int64: -1 for kept, else the kept sample it repeats."""
    n = len(order)
    dup_of = np.full(n, -2, np.int64)  # -2: not decided yet
    for a in range(0, n, chunk):
        rows = order[a:a + chunk]
        pending = rows[dup_of[rows] == -2]
        if not len(pending):
            continue
        for i, nbrs in zip(pending.tolist(), neighbours(pending)):
            if dup_of[i] != -2:
                continue  # suppressed by a sample kept earlier in this chunk
            dup_of[i] = -1
            free = nbrs[dup_of[nbrs] == -2]
            dup_of[free] = i
    return dup_of


def near_duplicates(vectors: np.ndarray, groups: Sequence[str], quality: Sequence[float],
                    threshold: float = 0.96, exact_limit: int = 20_000, seed: int = 0,
                    mask_dims: int = 0, mask_threshold: float = 0.999) -> np.ndarray:
    """dup_of (n,): -1 for samples kept, else the index of the kept sample each one repeats.

    vectors: (n, D) unit vectors; groups: duplicates are looked for within a group only (the
    class name: the same image with another class's mask is not redundant); quality: higher is
    kept (ties: the earlier sample). mask_dims > 0: the last mask_dims dims are the mask
    occupancy part (`MASK_DIMS` for `sample_vectors`), whose own cosine must also reach
    mask_threshold.
    """
    vectors = np.asarray(vectors, np.float32)
    quality = np.asarray(quality, np.float64)
    dup_of = np.full(len(vectors), -1, np.int64)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for members in by_group.values():
        idx = np.asarray(members, np.int64)
        v = vectors[idx]
        gate = _gate(v, mask_dims, mask_threshold)
        find = (_exact_neighbours(v, threshold, gate) if len(idx) <= exact_limit
                else _lsh_neighbours(v, threshold, gate, seed))
        order = np.lexsort((np.arange(len(idx)), -quality[idx]))
        local = _suppress(order, find)
        dup_of[idx] = np.where(local >= 0, idx[np.maximum(local, 0)], -1)
    return dup_of
