"""Tests of bundle.evaluation.figures: figures are written, with the red/green boundaries where expected."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bundle.evaluation.figures import (  # noqa: E402
    case_figure,
    learning_curves,
    overview_figure,
    read_run_log,
    training_curves,
)


def _read_png(path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000
    return mpimg.imread(str(path))[..., :3]


def _colour_columns(rgb: np.ndarray, channel: int) -> np.ndarray:
    """Column indices of strongly red (channel 0) or green (channel 1) pixels."""
    other = [c for c in range(3) if c != channel]
    hit = (rgb[..., channel] > 0.35) & (rgb[..., channel] - rgb[..., other].max(axis=-1) > 0.25)
    return np.nonzero(hit)[1]


def _scene(shape=(40, 32, 24)):
    """Image with a bright block; reference block on the low-x side, prediction block on the high-x side."""
    image = np.random.default_rng(0).normal(0.0, 0.1, size=shape).astype(np.float32)
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    ref[4:16, 8:24, 6:18] = True
    pred[24:36, 8:24, 6:18] = True
    image[ref | pred] += 1.0
    return image, ref, pred


def test_case_figure_draws_reference_red_left_of_prediction_green(tmp_path):
    image, ref, pred = _scene()
    out = case_figure(image, ref, pred, tmp_path / "sub" / "case.png", title="case 1", spacing=(1.0, 1.0, 2.0))
    rgb = _read_png(out)
    red, green = _colour_columns(rgb, 0), _colour_columns(rgb, 1)
    assert red.size > 50 and green.size > 50
    # The axial panel is the left third; in it axis 0 runs left to right, so red lies left of green.
    third = rgb.shape[1] // 3
    red_ax, green_ax = red[red < third], green[green < third]
    assert red_ax.size > 20 and green_ax.size > 20
    assert np.median(red_ax) < np.median(green_ax)


def test_case_figure_empty_masks_and_channel_first(tmp_path):
    image, ref, _ = _scene()
    out = case_figure(image[None], ref[None], np.zeros_like(ref)[None], tmp_path / "empty_pred.png")
    rgb = _read_png(out)
    assert _colour_columns(rgb, 0).size > 50
    out = case_figure(image, np.zeros_like(ref), None, tmp_path / "none.png")  # volume centre, no contours
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="same shape"):
        case_figure(image, ref[:-1], ref[:-1], tmp_path / "bad.png")


def test_overview_figure(tmp_path):
    image, ref, pred = _scene()
    items = [(f"case{i}", image, ref, pred, 0.5 + 0.1 * i) for i in range(3)]
    rgb = _read_png(overview_figure(items, tmp_path / "overview.png", spacing=(1.0, 1.0, 1.0), ncols=2))
    assert _colour_columns(rgb, 0).size > 50 and _colour_columns(rgb, 1).size > 50
    with pytest.raises(ValueError, match="empty"):
        overview_figure([], tmp_path / "none.png")


def _write_log(path):
    lines = []
    for it in range(0, 1000, 100):
        lines.append({"iteration": it, "loss": 1.0 / (it + 10), "loss_sup": 0.5 / (it + 10), "loss_consis": 0.01})
        if it % 200 == 0:
            lines.append({"iteration": it, "val_dice": it / 1000.0})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_read_run_log_jsonl_and_csv(tmp_path):
    _write_log(tmp_path / "log.jsonl")
    series = read_run_log(tmp_path / "log.jsonl")
    assert set(series) == {"loss", "loss_sup", "loss_consis", "val_dice"}
    assert series["val_dice"] == [(0, 0.0), (200, 0.2), (400, 0.4), (600, 0.6), (800, 0.8)]
    assert len(series["loss"]) == 10
    (tmp_path / "log.csv").write_text("iteration,loss,val_dice\n0,1.5,\n100,1.0,0.7\n")
    assert read_run_log(tmp_path / "log.csv") == {"loss": [(0, 1.5), (100, 1.0)], "val_dice": [(100, 0.7)]}
    (tmp_path / "bad.jsonl").write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="iteration"):
        read_run_log(tmp_path / "bad.jsonl")


def test_training_and_learning_curves(tmp_path):
    _write_log(tmp_path / "log.jsonl")
    out = training_curves(tmp_path / "log.jsonl", tmp_path / "train.png")
    assert out.stat().st_size > 1000
    out = training_curves({"loss": [(0, 1.0), (10, 0.5)]}, tmp_path / "train_dict.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="loss"):
        training_curves({"lr": [(0, 0.01)]}, tmp_path / "none.png")
    runs = {"supervised-8": [(0, 0.1), (500, 0.6)], "plgdf-8": [(0, 0.1), (500, 0.7)], "supervised-72": []}
    assert learning_curves(runs, tmp_path / "learning.png").stat().st_size > 1000
    # styles reach the lines: another colour and dash give another image; an unknown keyword is refused
    styled = learning_curves(runs, tmp_path / "styled.png", styles={"plgdf-8": {"color": "k", "linestyle": ":"}})
    assert styled.read_bytes() != (tmp_path / "learning.png").read_bytes()
    with pytest.raises(AttributeError, match="no_such_property"):
        learning_curves(runs, tmp_path / "bad.png", styles={"plgdf-8": {"no_such_property": 1}})
