"""Prepare TCIA NIH Pancreas-CT: 1 mm, HU [-125, 275] -> [0, 1], x/y crop around the pancreas (25 voxels), z-score.

    python -m scripts.prepare_pancreas --images /data/Pancreas-CT --labels /data/TCIA_pancreas_labels-02-05-2017 \\
        --out data/pancreas --n-labelled 6 --n-test 20

--images holds one DICOM folder per case (PANCREAS_0001/..., read with SimpleITK's ImageSeriesReader) or NIfTI
files; --labels the label files (label0001.nii.gz); cases are matched by their number. Writes
<out>/images/<case>.nii.gz, <out>/labels/<case>.nii.gz and the data list (default <out>/datalist.json).
"""

from __future__ import annotations

import argparse

from bundle.data.prepare_pancreas import prepare_pancreas
from scripts._split import print_counts, split_kwargs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of CT cases (DICOM folders or NIfTI files)")
    parser.add_argument("--labels", required=True, help="folder of label files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--datalist", help="data list path (default <out>/datalist.json)")
    parser.add_argument("--n-labelled", type=int, default=6, help="labelled cases: 3, 6 or 12 (default 6)")
    parser.add_argument("--n-val", type=int, default=0, help="validation cases before the test ones (default 0)")
    parser.add_argument("--n-test", type=int, default=20, help="test cases, the last by id (default 20)")
    parser.add_argument("--test-list", help="file of test case ids/numbers (overrides --n-test)")
    parser.add_argument("--val-list", help="file of validation case ids/numbers (overrides --n-val)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="mm (default 1 1 1)")
    parser.add_argument("--margin", type=int, default=25, help="x/y crop margin in voxels (default 25)")
    parser.add_argument("--overwrite", action="store_true", help="re-process existing outputs")
    args = parser.parse_args(argv)
    return print_counts(
        prepare_pancreas(
            args.images, args.labels, args.out, spacing=args.spacing, margin=args.margin, **split_kwargs(args)
        )
    )


if __name__ == "__main__":
    main()
