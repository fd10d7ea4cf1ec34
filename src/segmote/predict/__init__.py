"""Prediction: prompts, the Segmenter, volumes and propagation through them."""
