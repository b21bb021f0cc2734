"""Evaluate a checkpoint: Dice, Jaccard, 95HD, ASD (voxels and mm) per case, summary, markdown table, pictures.

LA h5 cases (legacy layout ``<la-dir>/<ID>/mri_norm2.h5``) from a list file, e.g. the LA-lite benchmark at 1.25 mm::

    python -m scripts.evaluate --checkpoint models/model.pt --la-dir ../shared/data/LA --la-list test.list \\
        --resample-factor 0.5 --config configs/presets/la.json --out eval/la

Any NIfTI data list (section ``test`` or ``validation``), the paper's exact-stride protocol::

    python -m scripts.evaluate --checkpoint runs/train/checkpoint_best.pt --datalist data/pancreas/datalist.json \\
        --section test --config configs/presets/pancreas.json --protocol paper --out eval/pancreas

Outputs in ``--out``: ``metrics.csv``, ``summary.json``, ``summary.md``, ``cases/<case>.png``, ``overview.png``
(and ``training_curves.png`` with ``--training-log``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundle.evaluation.evaluate import evaluate_checkpoint


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        default="models/model.pt",
        help="flat state_dict or training checkpoint ('network' entry); default models/model.pt",
    )
    parser.add_argument("--out", required=True, help="report folder")
    src = parser.add_argument_group("data (one of)")
    src.add_argument("--datalist", help="data list JSON")
    src.add_argument("--section", default="test", choices=["test", "validation", "training"], help="default test")
    src.add_argument("--la-dir", help="folder of LA case folders (<ID>/mri_norm2.h5)")
    src.add_argument("--la-list", help="LA list file, one ID per line")
    src.add_argument(
        "--resample-factor",
        type=float,
        default=None,
        help="LA only: evaluate at 0.625/factor mm (0.5: the LA-lite 1.25 mm)",
    )
    proto = parser.add_argument_group("protocol")
    proto.add_argument(
        "--config",
        action="append",
        default=[],
        help="extra config/preset file merged after inference.json + evaluate.json (repeatable); "
        "default for LA: configs/presets/la.json",
    )
    proto.add_argument(
        "--protocol",
        choices=["default", "monai", "paper"],
        default="default",
        help="default (or monai): the bundle's inference window (configs/inference.json: a lattice subset of a dense "
        "grid, gaussian blending); paper: exact stride, uniform averaging",
    )
    proto.add_argument("--roi", type=int, nargs=3, help="window size (default: the config's patch_size)")
    proto.add_argument("--stride", type=int, nargs=3, help="paper protocol stride (default 18 18 4 / 16 16 16)")
    proto.add_argument(
        "--overlap",
        type=float,
        nargs="+",
        help="MONAI SlidingWindowInferer with this overlap (one value or one per axis) instead of the default window",
    )
    proto.add_argument(
        "--mode",
        choices=["constant", "gaussian"],
        help="blending of the default window: gaussian or constant (uniform)",
    )
    proto.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    proto.add_argument("--tta", action="store_true", help="flip test-time augmentation (default protocol)")
    proto.add_argument(
        "--largest-cc", action="store_true", help="keep the largest connected component (default protocol)"
    )
    proto.add_argument("--device", help="e.g. cpu or cuda:0 (default: CUDA when available)")
    proto.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="config override, VALUE as JSON (e.g. --set n_filters=16); repeatable",
    )
    rep = parser.add_argument_group("report")
    rep.add_argument(
        "--space",
        choices=["original", "model"],
        help="original: the scan's grid (default for data lists); model: the preprocessed grid "
        "(default for LA cases)",
    )
    rep.add_argument(
        "--empty-policy",
        choices=["nan", "reference"],
        default="nan",
        help="scoring of empty predictions (default nan; reference = the authors' silent zeros)",
    )
    rep.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    rep.add_argument("--save-masks", action="store_true", help="also write the predicted masks to <out>/masks")
    rep.add_argument("--training-log", help="a run's log.jsonl: also plot training_curves.png")
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set needs ID=VALUE, got {item!r}")
        overrides[key] = _value(value)
    summary = evaluate_checkpoint(
        args.checkpoint,
        args.out,
        datalist=args.datalist,
        section=args.section,
        la_dir=args.la_dir,
        la_list=args.la_list,
        resample_factor=args.resample_factor,
        configs=args.config,
        protocol=args.protocol,
        roi_size=args.roi,
        stride=args.stride,
        overlap=args.overlap[0] if args.overlap and len(args.overlap) == 1 else args.overlap,
        mode=args.mode,
        sw_batch_size=args.sw_batch_size,
        space=args.space,
        empty_policy=args.empty_policy,
        figures=not args.no_figures,
        save_masks=args.save_masks,
        tta=args.tta,
        keep_largest_cc=args.largest_cc,
        device=args.device,
        overrides=overrides,
    )
    if args.training_log:
        from bundle.evaluation.figures import training_curves

        print(f"wrote {training_curves(args.training_log, Path(args.out) / 'training_curves.png')}")
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    return summary


if __name__ == "__main__":
    main()
