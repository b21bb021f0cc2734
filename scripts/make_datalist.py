"""Build a semi-supervised data list JSON from a dataset folder (imagesTr/labelsTr/imagesUnlabeled/...).

Example: ``python -m scripts.make_datalist data/mydata --out data/mydata/datalist.json --val-fraction 0.2
--n-labelled 8 --seed 0``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bundle.data.datalist import build_datalist


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--out", default=None, help="output JSON (default: <root>/datalist.json)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="labelled cases moved to validation")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="labelled cases moved to test")
    parser.add_argument("--n-labelled", type=int, default=None, help="labelled cases kept (rest -> unlabeled)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    for name, default in [
        ("images-tr", "imagesTr"),
        ("labels-tr", "labelsTr"),
        ("images-unlabeled", "imagesUnlabeled"),
        ("images-val", "imagesVal"),
        ("labels-val", "labelsVal"),
        ("images-ts", "imagesTs"),
        ("labels-ts", "labelsTs"),
    ]:
        parser.add_argument(f"--{name}", default=default, help=f"sub-folder name (default: {default})")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out is not None else Path(args.root) / "datalist.json"
    datalist = build_datalist(
        args.root,
        out=out,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        n_labelled=args.n_labelled,
        seed=args.seed,
        images_tr=args.images_tr,
        labels_tr=args.labels_tr,
        images_unlabeled=args.images_unlabeled,
        images_val=args.images_val,
        labels_val=args.labels_val,
        images_ts=args.images_ts,
        labels_ts=args.labels_ts,
    )
    print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in datalist.items()))
    return datalist


if __name__ == "__main__":
    main()
