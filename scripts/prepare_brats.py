"""Prepare BraTS FLAIR whole tumour: brain bounding-box crop, 99.9th-percentile clip, z-score over the brain.

    python -m scripts.prepare_brats --src /data/MICCAI_BraTS_2019_Data_Training --out data/brats \\
        --n-labelled 25 --n-val 25 --n-test 60

Reads <case>/<case>_flair.nii.gz + <case>_seg.nii.gz (BraTS 2019, brain = FLAIR > 0) or the
Flair_subtrMeanDivStd / OTMultiClass / brainmask layout of ../shared/data/brats_flair. Writes
<out>/images/<case>.nii.gz, <out>/labels/<case>.nii.gz (label > 0) and the data list (default <out>/datalist.json).
"""

from __future__ import annotations

import argparse

from bundle.data.prepare_brats import prepare_brats
from scripts._split import print_counts, split_kwargs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder with the BraTS cases (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--datalist", help="data list path (default <out>/datalist.json)")
    parser.add_argument("--n-labelled", type=int, default=25, help="labelled cases: 12, 25 or 50 (default 25)")
    parser.add_argument("--n-val", type=int, default=25, help="validation cases (default 25)")
    parser.add_argument("--n-test", type=int, default=60, help="test cases (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="split permutation seed (default 0)")
    parser.add_argument("--val-list", help="file of validation case names (overrides --n-val)")
    parser.add_argument("--test-list", help="file of test case names (overrides --n-test)")
    parser.add_argument("--cases", nargs="+", help="only these cases")
    parser.add_argument("--overwrite", action="store_true", help="re-process existing outputs")
    args = parser.parse_args(argv)
    return print_counts(prepare_brats(args.src, args.out, seed=args.seed, cases=args.cases, **split_kwargs(args)))


if __name__ == "__main__":
    main()
