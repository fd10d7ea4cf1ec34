"""Training of SegMoTE adapters on cached image embeddings (see `trainer.fit`)."""
