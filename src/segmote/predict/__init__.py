"""Prediction: from files and prompts to label maps (single files and folders of cases)."""
