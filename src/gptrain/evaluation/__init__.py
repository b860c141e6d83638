"""Scoring a model: held-out loss, perplexity, bits per byte and benchmark tasks."""
