"""Curation: a small, clean, balanced training set from large heterogeneous datasets (the
paper's MedSeg-HQ idea): quality scores and sanity rules (`scores`, `candidates`), near-duplicate
removal on frozen-encoder embeddings (`redundancy`), a seeded budget balanced over modality x
class (`select`), the manifest `segmote train --manifest` reads (`manifest`) and an HTML report
(`report`). `pipeline.curate` runs them in order."""
