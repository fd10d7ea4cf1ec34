"""Training data: dataset folders, patient-level splits, slice samples and the embedding cache.

    datasets = discover([Path("Dataset001_X"), Path("my_2d_set")])
    split = make_split(datasets, val_fraction=0.2, seed=0)
    train = slice_samples(datasets, split, part="train")     # .samples, .skipped
    cache = EmbeddingCache(Path("cache"), model, "litemedsam-79d8c9dc")
    cache.build(train.samples)
    item = cache.get(train.samples[0])                      # embeddings + label map
"""

from segmote.data.cache import CachedSlice, CacheStats, EmbeddingCache
from segmote.data.datasets import (Case, DatasetInfo, SampleList, SliceSample, discover,
                                   load_split, make_split, save_split, slice_samples)

__all__ = ["CacheStats", "CachedSlice", "EmbeddingCache", "Case", "DatasetInfo", "SampleList", "SliceSample", "discover", "load_split",
           "make_split", "save_split", "slice_samples"]
