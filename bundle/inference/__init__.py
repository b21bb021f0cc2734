"""Inference: input lists, inferers, post-processing, mask writers and per-case bookkeeping."""
