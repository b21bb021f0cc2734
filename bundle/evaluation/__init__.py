"""Evaluation: segmentation metrics, per-case reports, checkpoint evaluation and figures."""
