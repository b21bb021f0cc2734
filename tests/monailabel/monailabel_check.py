"""End-to-end check of the bundle in MONAI Label's ``monaibundle`` app; run by ``tests/monailabel/monailabel_check.sh``.

Inside the MONAI Label environment it: copies the monaibundle app out of the installed package (``monailabel apps
--download``, offline), copies the bundle to ``<work>/bundles/<name>`` with tiny training settings and links it into
``apps/monaibundle/model/<name>``, writes demo studies (3 labelled in ``labels/final``, 3 without a label), trains a
tiny ``models/model.pt`` with the bundle's own command, starts ``monailabel start_server`` on 127.0.0.1 (a free
port), and checks over HTTP:

1. ``GET /info/``: the bundle is listed as a model and a trainer, with the label ``spleen``;
2. ``POST /infer/<name>?image=<id>&output=image``: a 0/1 mask with the study image's shape and affine;
3. ``POST /train/<name>?run_sync=true`` with ``val_split`` 0: the PLGDF trainer ran with the unlabelled studies
   (pseudo-label terms logged), with an empty validation set, replaced ``model.pt`` and wrote no demo data;
4. the same with a validation split of one study: validation ran;
5. ``/infer`` again with the retrained model.

It stops the server and prints one line per check and ``N passed, M failed``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

NAME = "plgdf_segmentation"
COPY_ITEMS = ("configs", "bundle", "scripts", "docs", "LICENSE", "README.md", "CHANGELOG.md", "setup.cfg")
# tiny settings written into the copy's train.json (MONAI Label passes only max_epochs and the data lists)
TINY_TRAIN = {
    "val_interval": 3,
    "labeled_batch_size": 1,
    "unlabeled_batch_size": 1,
    "print_interval": 1,
    "patch_size": [32, 32, 32],
    "num_workers": 0,
}
STUDY_SHAPE = (64, 64, 20)
SERVER_START_TIMEOUT = 600
REQUEST_TIMEOUT = 900


class Check:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str, float]] = []

    def run(self, name: str, fn: Callable[[], str]) -> bool:
        t0 = time.time()
        try:
            detail, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - every failure becomes a FAIL line
            detail, ok = f"{type(e).__name__}: {e}", False
        dt = time.time() - t0
        self.results.append((name, ok, detail, dt))
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({dt:.1f} s): {detail}", flush=True)
        return ok


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, method: str = "GET", body: dict | None = None, timeout: float = 60) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def run(cmd: list[str], cwd: Path, log: Path, timeout: float = 900) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}); see {log}:\n{log.read_text(encoding='utf-8')[-3000:]}"
        )


def copy_bundle(repo: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in COPY_ITEMS:
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, dest / item)
    (dest / "models").mkdir()
    train = dest / "configs" / "train.json"
    config = json.loads(train.read_text(encoding="utf-8"))
    config.update(TINY_TRAIN)
    train.write_text(json.dumps(config, indent=4))


def make_studies(work: Path) -> tuple[Path, Path, list[str], list[str]]:
    """Demo cases as a MONAI Label datastore: images in ``studies/``, final labels in ``studies/labels/final/``."""
    from bundle.data.demo import generate_demo_dataset

    demo = work / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    generate_demo_dataset(demo, n_labelled=3, n_unlabelled=3, n_val=0, n_test=0, shape=STUDY_SHAPE)
    studies = work / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    (studies / "labels" / "final").mkdir(parents=True)
    labelled, unlabelled = [], []
    for f in sorted((demo / "imagesTr").glob("*.nii.gz")):
        shutil.copy2(f, studies / f.name)
        shutil.copy2(demo / "labelsTr" / f.name, studies / "labels" / "final" / f.name)
        labelled.append(f.name[: -len(".nii.gz")])
    for f in sorted((demo / "imagesUnlabeled").glob("*.nii.gz")):
        shutil.copy2(f, studies / f.name)
        unlabelled.append(f.name[: -len(".nii.gz")])
    return demo, studies, labelled, unlabelled


def read_log(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    repo, work = args.repo.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    check = Check()

    import monailabel
    import nibabel as nib
    import numpy as np
    import torch

    print(f"monailabel {monailabel.__version__}, torch {torch.__version__}, numpy {np.__version__}", flush=True)
    app = work / "apps" / "monaibundle"
    bundle_dir = work / "bundles" / NAME
    state: dict = {}

    def setup() -> str:
        if not app.exists():
            run(
                ["monailabel", "apps", "--download", "--name", "monaibundle", "--output", str(work / "apps")],
                cwd=work,
                log=work / "apps_download.log",
                timeout=300,
            )
        copy_bundle(repo, bundle_dir)
        link = app / "model" / NAME
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(bundle_dir, target_is_directory=True)
        demo, studies, labelled, unlabelled = make_studies(work)
        state.update(demo=demo, studies=studies, labelled=labelled, unlabelled=unlabelled)
        env = dict(os.environ, PYTHONPATH=str(bundle_dir))
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/train.json",
            "--dataset_dir",
            str(demo),
            "--num_iterations",
            "3",
            "--output_dir",
            str(work / "pretrain"),
            "--ckpt_dir",
            str(bundle_dir / "models"),
        ]
        with open(work / "pretrain.log", "w") as f:
            proc = subprocess.run(cmd, cwd=bundle_dir, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900)
        if proc.returncode != 0 or not (bundle_dir / "models" / "model.pt").is_file():
            raise RuntimeError(f"tiny pre-training failed; see {work / 'pretrain.log'}")
        return (
            f"app copied offline, bundle linked at {link}, {len(labelled)} labelled + {len(unlabelled)} "
            f"unlabelled studies, tiny model.pt trained (numpy {np.__version__})"
        )

    if not check.run("setup (app, bundle link, studies, tiny model.pt)", setup):
        return summary(check, t_start)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = work / "server.log"
    cmd = [
        "monailabel",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(state["studies"]),
        "--conf",
        "models",
        NAME,
        "--conf",
        "zoo_source",
        "local",
        "--conf",
        "sam2",
        "false",
        "--conf",
        "preload",
        "false",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_f = open(server_log, "w")
    server = subprocess.Popen(cmd, cwd=work, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def started() -> str:
            deadline = time.time() + SERVER_START_TIMEOUT
            while time.time() < deadline:
                if server.poll() is not None:
                    raise RuntimeError(
                        f"server exited ({server.returncode}):\n{server_log.read_text(encoding='utf-8')[-3000:]}"
                    )
                try:
                    status, body, _ = http(f"{base}/info/", timeout=10)
                    if status == 200:
                        state["info"] = json.loads(body)
                        return f"listening on {base}"
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    pass
                time.sleep(2)
            raise TimeoutError(f"no answer from {base}/info/ in {SERVER_START_TIMEOUT} s")

        if not check.run("server start", started):
            return summary(check, t_start)

        def info() -> str:
            info = state["info"]
            model = info.get("models", {}).get(NAME)
            assert model is not None, f"{NAME} not in models {list(info.get('models', {}))}"
            assert "spleen" in model.get("labels", {}), f"labels {model.get('labels')}"
            assert NAME in info.get("trainers", {}), f"{NAME} not in trainers {list(info.get('trainers', {}))}"
            return f"model {NAME}: type {model.get('type')}, labels {model.get('labels')}; trainer listed"

        check.run("GET /info/", info)

        def infer(image_id: str) -> Callable[[], str]:
            def _infer() -> str:
                status, body, headers = http(
                    f"{base}/infer/{NAME}?image={image_id}&output=image", method="POST", timeout=REQUEST_TIMEOUT
                )
                assert status == 200, f"HTTP {status}: {body[:500]!r}"
                out = work / f"infer_{image_id}_{len(check.results)}.nii.gz"
                out.write_bytes(body)
                mask = nib.load(str(out))
                ref = nib.load(str(state["studies"] / f"{image_id}.nii.gz"))
                data = np.asarray(mask.dataobj)
                assert data.shape == ref.shape, f"mask shape {data.shape} != image shape {ref.shape}"
                assert np.allclose(mask.affine, ref.affine, atol=1e-3), f"affine\n{mask.affine}\n!=\n{ref.affine}"
                values = set(np.unique(data).tolist())
                assert values <= {0, 1}, f"mask values {sorted(values)}"
                return (
                    f"mask {data.shape} with the image's shape and affine, values {sorted(values)}, "
                    f"foreground {float((data > 0).mean()):.3f}"
                )

            return _infer

        check.run(f"POST /infer/{NAME} (image {state['unlabelled'][0]})", infer(state["unlabelled"][0]))

        def train(val_split: float, expect_validation: bool) -> Callable[[], str]:
            def _train() -> str:
                model_pt = bundle_dir / "models" / "model.pt"
                before = model_pt.stat().st_mtime_ns
                offset = server_log.stat().st_size
                body = {"max_epochs": 1, "val_split": val_split, "multi_gpu": False, "pretrained": True}
                status, answer, _ = http(
                    f"{base}/train/{NAME}?run_sync=true", method="POST", body=body, timeout=REQUEST_TIMEOUT
                )
                assert status == 200, f"HTTP {status}: {answer[:500]!r}"
                log = read_log(bundle_dir / "runs" / "train" / "log.jsonl")
                steps = [r for r in log if "loss" in r]
                assert len(steps) == TINY_TRAIN["val_interval"], f"{len(steps)} iterations logged"
                assert all("pseudo_fg" in r and "loss_semi" in r for r in steps), "no pseudo-label terms logged"
                assert any(r["loss_semi"] > 0 for r in steps), "L_semi stayed 0: no unlabelled data used"
                vals = [r for r in log if "val_dice" in r]
                assert bool(vals) == expect_validation, f"validation records {vals}"
                assert model_pt.stat().st_mtime_ns != before, "model.pt was not replaced"
                text = server_log.read_text(errors="replace")[offset:]
                assert "PLGDFTrainer" in text, "the server's train log does not mention PLGDFTrainer"
                assert not (bundle_dir / "data").exists(), "training wrote the demo dataset into the bundle"
                fallback = "image(s) beside them without a label" in text
                return (
                    f"PLGDFTrainer ran {len(steps)} iterations with pseudo-labels (loss_semi "
                    f"{steps[-1]['loss_semi']:.3f}), unlabelled fallback logged: {fallback}, "
                    f"validation records {len(vals)}, model.pt replaced"
                )

            return _train

        check.run(f"POST /train/{NAME}?run_sync=true (val_split 0: empty validation)", train(0.0, False))
        check.run(f"POST /train/{NAME}?run_sync=true (val_split 0.34: one validation study)", train(0.34, True))
        check.run(f"POST /infer/{NAME} after training (image {state['unlabelled'][1]})", infer(state["unlabelled"][1]))
    finally:
        stop(server)
        log_f.close()
        print(f"server log: {server_log}", flush=True)
    return summary(check, t_start)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def summary(check: Check, t_start: float) -> int:
    passed = sum(ok for _, ok, _, _ in check.results)
    failed = len(check.results) - passed
    print("\nMONAI Label check summary", flush=True)
    for name, ok, _detail, dt in check.results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}  ({dt:.1f} s)", flush=True)
    print(f"total {time.time() - t_start:.0f} s", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
