"""Generate the synthetic CT-like demo dataset: ``python -m scripts.make_demo_data --out data/demo --seed 0``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bundle.data.demo import ensure_demo_dataset, generate_demo_dataset


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/demo", help="dataset folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--n-labelled", type=int, default=4, help="labelled training cases (default: 4)")
    parser.add_argument("--n-unlabelled", type=int, default=16, help="unlabelled training cases (default: 16)")
    parser.add_argument("--n-val", type=int, default=4, help="validation cases (default: 4)")
    parser.add_argument("--n-test", type=int, default=4, help="test cases (default: 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 32), help="voxels (default: 96 96 32)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 3.0), help="mm (default: 1 1 3)")
    parser.add_argument(
        "--organ-scale",
        type=float,
        default=1.0,
        help="factor on the organ's diameter; 0.65 makes a small structure, 2.7 %% of the body (default: 1.0)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate in place even if datalist.json exists")
    args = parser.parse_args(argv)
    kwargs = dict(
        seed=args.seed,
        n_labelled=args.n_labelled,
        n_unlabelled=args.n_unlabelled,
        n_val=args.n_val,
        n_test=args.n_test,
        shape=tuple(args.shape),
        spacing=tuple(args.spacing),
        organ_scale=args.organ_scale,
    )
    datalist = generate_demo_dataset(args.out, **kwargs) if args.force else ensure_demo_dataset(args.out, **kwargs)
    print(datalist)
    return datalist


if __name__ == "__main__":
    main()
