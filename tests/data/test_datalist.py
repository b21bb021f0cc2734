"""Tests of bundle/data/datalist.py: loading/validation, building from a folder layout, seeded splits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.data.datalist import build_datalist, case_name, load_datalist

SECTIONS = ("training", "unlabeled", "validation", "test")


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """imagesTr/labelsTr with 10 cases of mixed formats, 2 unlabelled, 1 validation, 2 test (one unlabelled)."""
    root = tmp_path / "data"
    suffixes = [".nii.gz", ".nii", ".nrrd", ".mha", ".nii.gz"] * 2
    for i, suffix in enumerate(suffixes):
        _touch(root, f"imagesTr/case_{i:02d}{suffix}", f"labelsTr/case_{i:02d}{suffix}")
    _touch(
        root, "imagesTr/.hidden.nii.gz", "imagesTr/notes.txt", "imagesUnlabeled/u_0.nii.gz", "imagesUnlabeled/u_1.mha"
    )
    _touch(root, "imagesVal/v_0.nii.gz", "labelsVal/v_0.nii.gz", "imagesTs/t_0.nii.gz")
    return root


def test_case_name() -> None:
    assert case_name("a/b/x.nii.gz") == "x" and case_name("x.h5") == "x" and case_name("x.NRRD") == "x"
    assert case_name("x.txt") is None


def test_build_without_split_and_round_trip(layout: Path) -> None:
    out = layout / "lists" / "datalist.json"
    dl = build_datalist(layout, out=out)
    assert [len(dl[s]) for s in SECTIONS] == [10, 2, 1, 1]
    assert [Path(e["image"]).name for e in dl["training"]][:2] == ["case_00.nii.gz", "case_01.nii"]
    assert all(case_name(e["image"]) == case_name(e["label"]) for e in dl["training"])
    assert "label" not in dl["test"][0] and "label" not in dl["unlabeled"][0]
    raw = json.loads(out.read_text())
    assert raw["training"][0] == {"image": "../imagesTr/case_00.nii.gz", "label": "../labelsTr/case_00.nii.gz"}
    assert load_datalist(out, check_files=True) == dl


def test_seeded_split_and_label_budget(layout: Path) -> None:
    dl = build_datalist(layout, val_fraction=0.2, test_fraction=0.1, n_labelled=3, seed=7)
    assert [len(dl[s]) for s in SECTIONS] == [3, 4 + 2, 2 + 1, 1 + 1]
    assert dl == build_datalist(layout, val_fraction=0.2, test_fraction=0.1, n_labelled=3, seed=7)
    other = build_datalist(layout, val_fraction=0.2, test_fraction=0.1, n_labelled=3, seed=8)
    assert other["training"] != dl["training"] or other["validation"] != dl["validation"]
    names = [case_name(e["image"]) for s in SECTIONS for e in dl[s]]
    assert len(names) == len(set(names)) == 10 + 2 + 1 + 1  # disjoint and complete
    assert all("label" not in e for e in dl["unlabeled"])


def test_h5_is_its_own_label_and_nnunet_names(tmp_path: Path) -> None:
    _touch(tmp_path, "imagesTr/la_1.h5", "imagesTr/ct_0000.nii.gz", "labelsTr/ct.nii.gz")
    dl = build_datalist(tmp_path)
    entries = {Path(e["image"]).name: Path(e["label"]).name for e in dl["training"]}
    assert entries == {"ct_0000.nii.gz": "ct.nii.gz", "la_1.h5": "la_1.h5"}


def test_build_errors_name_the_file(layout: Path, tmp_path: Path) -> None:
    (layout / "labelsTr" / "case_02.nrrd").unlink()
    with pytest.raises(FileNotFoundError, match="case_02.nrrd"):
        build_datalist(layout)
    _touch(layout, "labelsTr/case_02.nrrd", "labelsTr/orphan.nii.gz")
    with pytest.raises(ValueError, match="orphan.nii.gz"):
        build_datalist(layout)
    (layout / "labelsTr" / "orphan.nii.gz").unlink()
    with pytest.raises(ValueError, match="n_labelled=20"):
        build_datalist(layout, n_labelled=20)
    with pytest.raises(ValueError, match="val_fraction=0.7"):
        build_datalist(layout, val_fraction=0.7, test_fraction=0.5)
    with pytest.raises(FileNotFoundError, match="imagesTr"):
        build_datalist(tmp_path / "nowhere")


def test_load_resolves_paths_and_fills_sections(tmp_path: Path) -> None:
    path = tmp_path / "dl.json"
    absolute = str(tmp_path / "abs" / "x.nii.gz")
    path.write_text(json.dumps({"training": [{"image": "a/x.nii.gz", "label": absolute, "id": 3}], "name": "n"}))
    dl = load_datalist(path)
    assert set(dl) == set(SECTIONS) and dl["unlabeled"] == dl["validation"] == dl["test"] == []
    assert dl["training"][0] == {"image": str(tmp_path / "a" / "x.nii.gz"), "label": absolute, "id": 3}
    assert load_datalist(path, base_dir="/base")["training"][0]["image"] == str(Path("/base/a/x.nii.gz"))
    with pytest.raises(FileNotFoundError, match="x.nii.gz"):
        load_datalist(path, check_files=True)


@pytest.mark.parametrize(
    "content, match",
    [
        ("[1, 2]", "top level"),
        ("{not json", "not valid JSON"),
        ('{"training": {"image": "a"}}', "'training' must be a list"),
        ('{"training": [{"image": "a"}]}', r"'training'\[0\] needs a 'label'"),
        ('{"validation": [{"label": "a"}]}', r"'validation'\[0\] needs a non-empty 'image'"),
        ('{"unlabeled": ["a.nii.gz"]}', r"'unlabeled'\[0\] must be an object"),
    ],
)
def test_load_errors_name_file_and_key(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "broken_list.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        load_datalist(path)
    assert "broken_list.json" in str(err.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_datalist(tmp_path / "absent.json")


def test_invalid_json_names_file_line_and_column(tmp_path):
    from bundle.engine.errors import DataValidationError

    bad = tmp_path / "datalist.json"
    bad.write_text('{\n  "training": [\n    {"image": "a.nii.gz",}\n  ]\n}\n')
    with pytest.raises(DataValidationError, match=r"datalist\.json: not valid JSON at line 3, column \d+"):
        load_datalist(bad)
    with pytest.raises(FileNotFoundError, match="does not exist: check dataset_dir"):
        load_datalist(tmp_path / "nowhere" / "datalist.json")
