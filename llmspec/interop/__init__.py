"""Hugging Face transformers interop: checkpoints in, checkpoints out."""
