"""A checkpoint that does not fit the configured network names the setting that differs, in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import run_bundle

from bundle.engine.errors import CheckpointError
from bundle.engine.files import check_checkpoint, check_state_dict, save_atomic
from bundle.method.networks import PLGDFVNet


@pytest.mark.parametrize(
    "saved, expected",
    [
        ({"n_filters": 8}, r"n_filters = 4 here, 8 in the checkpoint"),
        ({"out_channels": 3}, r"num_classes = 2 here, 3 in the checkpoint"),
        ({"in_channels": 2}, r"in_channels = 1 here, 2 in the checkpoint"),
    ],
)
def test_shape_mismatch_names_the_setting(saved, expected):
    args = {"in_channels": 1, "out_channels": 2, "n_filters": 4}
    state = PLGDFVNet(**{**args, **saved}).state_dict()
    with pytest.raises(CheckpointError, match=expected) as err:
        check_state_dict(state, PLGDFVNet(**args), "model.pt")
    assert len(str(err.value).splitlines()) == 1 and len(str(err.value)) < 300


def test_fitting_and_foreign_state_dicts(tmp_path):
    net = PLGDFVNet(1, 2, n_filters=4)
    check_state_dict(net.state_dict(), net)  # fits: nothing raised
    save_atomic({"network": net.state_dict(), "iteration": 3}, tmp_path / "ckpt.pt")
    check_checkpoint(tmp_path / "ckpt.pt", net)  # a training checkpoint's "network" entry
    with pytest.raises(CheckpointError, match="does not fit this network.*not a model of this bundle"):
        check_state_dict({"fc.weight": torch.zeros(3, 3)}, net, "other.pt")


@pytest.mark.slow
def test_inference_with_a_wider_checkpoint_is_one_clear_line(tmp_path):
    model = tmp_path / "model.pt"
    save_atomic(PLGDFVNet(1, 2, n_filters=4).state_dict(), model)
    before = model.read_bytes()
    proc = run_bundle(
        "configs/inference.json", "--ckpt_path", str(model), "--n_filters", "2", "--output_dir", str(tmp_path / "o"),
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("CheckpointError:") and "n_filters = 2 here, 4 in the checkpoint" in last
    assert model.read_bytes() == before and not (tmp_path / "o").exists()


def test_any_loader_gets_the_named_setting(tmp_path):
    """MONAI Label loads model.pt with its own torch.load + network.load_state_dict(strict=False): the network itself
    names the differing setting."""
    save_atomic(PLGDFVNet(1, 2, n_filters=8).state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", map_location="cpu")
    with pytest.raises(CheckpointError, match="n_filters = 4 here, 8 in the checkpoint"):
        PLGDFVNet(1, 2, n_filters=4).load_state_dict(state, strict=False)
    net = PLGDFVNet(1, 2, n_filters=8)
    net.load_state_dict(state)  # a fitting checkpoint loads as before
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)
