"""Checkpoints on disk: writing, reading and verifying them."""
