"""The split options that ``prepare_brats`` and ``prepare_pancreas`` share, as keyword arguments of their
preparation functions."""

from __future__ import annotations

import argparse
from typing import Any

from bundle.data.prepare import read_list


def split_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``datalist``, ``n_labelled``, ``n_val``, ``n_test``, ``val_ids``, ``test_ids`` (read from ``--val-list`` /
    ``--test-list`` when given) and ``overwrite`` of a parsed command line."""
    return {
        "datalist": args.datalist,
        "n_labelled": args.n_labelled,
        "n_val": args.n_val,
        "n_test": args.n_test,
        "val_ids": read_list(args.val_list) if args.val_list else None,
        "test_ids": read_list(args.test_list) if args.test_list else None,
        "overwrite": args.overwrite,
    }


def print_counts(datalist: dict[str, list]) -> dict[str, list]:
    """Print the number of cases of each part of ``datalist`` (``training 25, unlabeled 150, ...``); return it."""
    print(", ".join(f"{k} {len(v)}" for k, v in datalist.items()))
    return datalist
