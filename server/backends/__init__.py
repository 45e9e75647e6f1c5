"""Inference backends, imported by name only when a model uses them."""
