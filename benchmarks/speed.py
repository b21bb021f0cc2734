"""Speed and memory of training, inference and the data pipeline (``python -m scripts.bench_speed``,
docs/performance.md).

Every figure is a median over repeats after warm-up, and every ratio compares two things measured in the same
process, interleaved round by round, so a busy machine slows both sides alike.

The public entry of the speed benchmarks (``scripts/bench_speed.py`` and the tests import from here); each part
lives in its own module:

- :func:`bench_training` (``speed_training.py``; the parts it times alone in ``speed_parts.py``): one real
  :class:`bundle.method.trainer.PLGDFTrainer` iteration (its own ``_iteration``, synthetic batches), broken down into
  teacher forward / student forward / losses / backward / optimizer+EMA / the rest (noise, mix, copies), against the
  *bare network work* it contains: the student's forward+backward on its ``labelled + (K + 1) * unlabelled`` rows (8
  for batch 2+2, K=2) plus the teacher's no-grad forward on ``K * unlabelled`` rows (4), timed on separate network
  copies in the default memory layout fp32 (the authors' setting) and in the trainer's layout and precision; and the
  loss terms alone (forward + backward on the captured student outputs), as the trainer computes them (one shared
  softmax pyramid) and each term on its own rows (the earlier implementation). ``cpu_precision`` (``auto`` runs the
  trainer's own probe first) and ``compile`` apply as in training; with ``compile`` an eager copy of the trainer and
  of the bare work run in the same rounds.
- :func:`host_summary_entry` / :func:`merge_host_summary` (``speed_summary.py``): one host's entry of
  ``docs/results/speed_summary.json``.
- :func:`bench_inference` (``speed_inference.py``): the sliding window over one volume at the paper's stride and at
  the bundle's default overlap, with the number of windows each ran.
- :func:`bench_data` (``speed_data.py``): the training preprocessing of ``configs/train.json`` per sample, uncached
  (load + resample + intensity + crop/augment) and cached (only the random part, as after ``CacheDataset``).

``speed_timing.py`` holds what they share (device synchronisation, medians, peak memory, the trainer's autocast).
"""

from __future__ import annotations

from benchmarks.speed_data import bench_data
from benchmarks.speed_inference import bench_inference
from benchmarks.speed_parts import time_loss_terms, unshared_loss_terms
from benchmarks.speed_summary import SUMMARY_SETTINGS, host_summary_entry, merge_host_summary
from benchmarks.speed_timing import peak_memory_mb
from benchmarks.speed_training import bench_training, build_trainer

__all__ = [
    "SUMMARY_SETTINGS",
    "bench_data",
    "bench_inference",
    "bench_training",
    "build_trainer",
    "host_summary_entry",
    "merge_host_summary",
    "peak_memory_mb",
    "time_loss_terms",
    "unshared_loss_terms",
]
