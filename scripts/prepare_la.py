"""Write the LA data list (the UA-MT h5 cases are used in place).

    python -m scripts.prepare_la --data-dir ../shared/data/LA --n-labelled 8 --n-val 8 --out data/la/datalist_8.json

Split of train.list (order kept): training = first N IDs, validation = last --n-val IDs (8: the LA-lite split;
0: the paper's split), unlabeled = the rest; test = test.list when given (or found next to train.list).
"""

from __future__ import annotations

import argparse

from bundle.data.prepare import prepare_la


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir",
        required=True,
        help="folder with '2018LA_Seg_Training Set' and train.list, or the case folders themselves",
    )
    parser.add_argument("--out", required=True, help="data list JSON to write")
    parser.add_argument("--train-list", help="default: train.list in --data-dir (or its parent)")
    parser.add_argument("--test-list", help="default: test.list next to the train list, if present")
    parser.add_argument("--n-labelled", type=int, default=8, help="labelled cases: 4, 8 or 16 (default 8)")
    parser.add_argument("--n-val", type=int, default=8, help="validation cases from the end (default 8; 0 = paper)")
    args = parser.parse_args(argv)
    datalist = prepare_la(args.data_dir, args.out, args.train_list, args.test_list, args.n_labelled, args.n_val)
    print(f"{args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in datalist.items()))
    return datalist


if __name__ == "__main__":
    main()
