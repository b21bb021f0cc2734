"""Export: the real ``ckpt_export`` command writes a TorchScript model whose output equals the eager network's on a
demo volume, and ``verify_net_in_out`` accepts the network against ``configs/metadata.json``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import DivisiblePad

from bundle.data.demo import generate_demo_dataset
from tests.conftest import REPO_ROOT

INFER = REPO_ROOT / "configs" / "inference.json"
META = REPO_ROOT / "configs" / "metadata.json"


def _parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(INFER))
    parser.read_meta(str(META))
    parser["bundle_root"] = str(REPO_ROOT)
    parser["device"] = "$torch.device('cpu')"
    return parser


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight ``model.pt`` (flat state_dict, as training writes it) and its ``ckpt_export`` TorchScript."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    net = _parser().get_parsed_content("network_def")
    ckpt, ts = tmp / "model.pt", tmp / "model.ts"
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, ckpt)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(ckpt),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ckpt_export failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert ts.is_file()
    return ckpt, ts


def _demo_volume(tmp_path: Path) -> torch.Tensor:
    """One demo case through the inference preprocessing, padded to a multiple of 16: ``(1, 1, H, W, D)``."""
    generate_demo_dataset(tmp_path / "demo", n_labelled=1, n_unlabelled=0, n_val=0, n_test=0, shape=(48, 40, 14))
    image = next((tmp_path / "demo" / "imagesTr").glob("*.nii.gz"))
    pre = _parser().get_parsed_content("preprocessing")
    x = pre({"image": str(image)})["image"]
    x = DivisiblePad(k=16)(x)
    return torch.as_tensor(x, dtype=torch.float32)[None]


def test_torchscript_matches_eager(exported, tmp_path):
    ckpt, ts = exported
    eager = _parser().get_parsed_content("network_def")
    eager.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    scripted.eval()
    x = _demo_volume(tmp_path)
    assert all(s % 16 == 0 for s in x.shape[2:]), x.shape
    with torch.no_grad():
        expected = eager(x)
        got = scripted(x)
    assert isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor)  # eval mode returns P1 only
    assert got.shape == expected.shape == (1, 2, *x.shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert float(expected.std()) > 0  # not a degenerate (all-constant) output
    # the bundle's config files travel inside the TorchScript archive
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)
    assert extra["metadata.json"] and extra["inference.json"]


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    env_path = list(sys.path)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(META),
            config_file=str(INFER),
            device="cpu",
            n=2,
            bundle_root=str(REPO_ROOT),
        )
    finally:
        sys.path[:] = env_path
