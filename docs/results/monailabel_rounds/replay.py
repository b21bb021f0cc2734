"""Offline replay of MONAI Label's first two rounds (1 then 2 final labels) on the check's synthetic studies.

Usage: python docs/results/monailabel_rounds/replay.py OUT FIRST SECOND NAME '{"semi_warmup": "none"}' [--study-seed 0] [--epochs 4]
Each round trains as BundleTrainTask does (tests/test_train_e2e.py MONAILABEL_TRAIN), then segments every study
with configs/inference.json and prints the Dice of each study and the mean over the studies without a label.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from bundle.data.demo import generate_demo_dataset  # noqa: E402
from tests.test_train_e2e import MONAILABEL_TRAIN  # noqa: E402

out, first, second, name, settings = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
study_seed = int(sys.argv[sys.argv.index("--study-seed") + 1]) if "--study-seed" in sys.argv else 0
epochs = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 4
root = out / f"set{study_seed}"
if not (root / "studies").exists():
    generate_demo_dataset(root / "demo", n_labelled=6, n_unlabelled=0, n_val=0, n_test=0, seed=study_seed)
    (root / "studies").mkdir(parents=True)
    (root / "truth").mkdir()
    for f in sorted((root / "demo" / "imagesTr").glob("*.nii.gz")):
        shutil.copy2(f, root / "studies" / f.name)
        shutil.copy2(root / "demo" / "labelsTr" / f.name, root / "truth" / f.name)
run = root / f"{name}_{first}_{second}"
shutil.rmtree(run, ignore_errors=True)
models = run / "models"
models.mkdir(parents=True)
studies = run / "studies"
(studies / "labels" / "final").mkdir(parents=True)
for f in (root / "studies").glob("*.nii.gz"):
    shutil.copy2(f, studies / f.name)
result = {"name": name, "settings": settings, "first": first, "second": second, "study_seed": study_seed, "rounds": []}
for rnd, label in enumerate([first, second], 1):
    shutil.copy2(root / "truth" / f"{label}.nii.gz", studies / "labels" / "final" / f"{label}.nii.gz")
    labelled = [
        {"image": str(studies / p.name), "label": str(p)} for p in sorted((studies / "labels" / "final").glob("*"))
    ]
    overrides = {
        "bundle_root": str(run / "bundle"),
        "output_dir": str(run / f"round{rnd}"),
        "ckpt_dir": str(models),
        "device": "cpu",
        "train#trainer#max_epochs": epochs,
        "train#dataset#data": labelled,
        "validate#dataset#data": [],
        **settings,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MONAILABEL_TRAIN,
            str(REPO / "configs/train.json"),
            str(models / "model.pt"),
            json.dumps(overrides),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (run / f"round{rnd}" / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in log if "loss" in r]
    pred = run / f"pred{rnd}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--input",
            str(root / "studies"),
            "--output_dir",
            str(pred),
            "--ckpt_path",
            str(models / "model.pt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dice = {}
    for t in sorted((root / "truth").glob("*.nii.gz")):
        n = t.name[: -len(".nii.gz")]
        p = next(pred.rglob(n + "*.nii.gz"))
        a = np.asarray(nib.load(t).dataobj) > 0
        b = np.asarray(nib.load(p).dataobj) > 0
        dice[n] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    labels = [first, second][:rnd]
    mean = float(np.mean([v for k, v in dice.items() if k not in labels]))
    result["rounds"].append(
        {
            "labels": labels,
            "dice": dice,
            "mean_unlabelled": mean,
            "pseudo_fg_last": steps[-1].get("pseudo_fg"),
            "label_fg_last": steps[-1].get("label_fg"),
            "loss_semi_last": steps[-1].get("loss_semi"),
        }
    )
    print(
        f"{name} {first}->{second} round {rnd}: mean Dice (studies without label) {mean:.3f}; "
        + " ".join(f"{k[-3:]}={v:.2f}" for k, v in dice.items())
        + f"; pseudo_fg {steps[-1].get('pseudo_fg')} label_fg {steps[-1].get('label_fg')}",
        flush=True,
    )
(run / "result.json").write_text(json.dumps(result, indent=1))
with open(out / "results.jsonl", "a") as fh:
    fh.write(json.dumps(result) + "\n")
