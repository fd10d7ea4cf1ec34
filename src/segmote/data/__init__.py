"""Training data: dataset folders, patient-level splits, slice samples and the embedding cache.

    from segmote.data.datasets import discover, make_split, slice_samples
    from segmote.data.cache import EmbeddingCache

    datasets = discover([Path("Dataset001_X"), Path("my_2d_set")])
    split = make_split(datasets, val_fraction=0.2, seed=0)
    train = slice_samples(datasets, split, part="train")     # .samples, .skipped
    cache = EmbeddingCache(Path("cache"), model, "litemedsam-79d8c9dc")
    cache.build(train.samples)
    item = cache.get(train.samples[0])                      # embeddings + label map

Nothing is imported here, so that the numpy-only modules (`datasets`, `files`) load without
torch; the embedding cache (`cache`) needs it.
"""
