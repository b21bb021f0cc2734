"""The MONAI Label helpers: the unlabelled-set fallback and the teacher restart from a loaded student."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine

from bundle.data.demo import generate_demo_dataset
from bundle.data.unlabeled import images_without_label, unlabeled_data
from bundle.handlers.teacher_init import TeacherFromStudent
from bundle.method.teacher import EMATeacher


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def _datastore(root: Path) -> dict[str, str]:
    """A MONAI Label-like datastore: studies in one folder, final labels below ``labels/final``."""
    files = {name: _touch(root / f"{name}.nii.gz") for name in ("a", "b", "c", "d")}
    files["label_a"] = _touch(root / "labels" / "final" / "a.nii.gz")
    files["label_b"] = _touch(root / "labels" / "final" / "b.nii.gz")
    _touch(root / ".hidden.nii.gz")
    _touch(root / "datastore_v2.json")
    return files


def test_images_without_label_in_a_datastore(tmp_path):
    f = _datastore(tmp_path / "studies")
    labeled = [{"image": f["a"], "label": f["label_a"]}]
    val = [{"image": f["b"], "label": f["label_b"]}]
    found = images_without_label(labeled, exclude=val)
    assert [Path(e["image"]).name for e in found] == ["c.nii.gz", "d.nii.gz"]  # no label, no validation case


def test_unlabeled_data_falls_back_without_datalist(tmp_path):
    f = _datastore(tmp_path / "studies")
    labeled = [{"image": f["a"], "label": f["label_a"]}, {"image": f["b"], "label": f["label_b"]}]
    found = unlabeled_data(labeled, tmp_path / "missing" / "datalist.json", [])
    assert [Path(e["image"]).name for e in found] == ["c.nii.gz", "d.nii.gz"]
    everything = [{"image": f[k], "label": f["label_a"]} for k in "abcd"]
    assert unlabeled_data(everything, None, None) == []  # all labelled: empty (the trainer falls back)


def test_unlabeled_data_uses_the_datalist_for_its_own_cases(tmp_path):
    datalist_file = generate_demo_dataset(
        tmp_path / "demo", n_labelled=2, n_unlabelled=2, n_val=1, n_test=0, shape=(16, 16, 8)
    )
    from bundle.data.datalist import load_datalist

    datalist = load_datalist(datalist_file)
    got = unlabeled_data(datalist["training"][:1], datalist_file, datalist["validation"])
    assert got == datalist["unlabeled"]
    # labelled cases that are not the datalist's (MONAI Label): the images beside them without a label
    other = tmp_path / "studies"
    f = _datastore(other)
    got = unlabeled_data([{"image": f["a"], "label": f["label_a"]}], datalist_file, [])
    assert [Path(e["image"]).name for e in got] == ["b.nii.gz", "c.nii.gz", "d.nii.gz"]


def test_teacher_from_student_on_fresh_start_only():
    student = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    teacher = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # what a CheckpointLoader does at STARTED
    engine = Engine(lambda e, b: None)
    handler = TeacherFromStudent(teacher, student)
    engine.state.iteration = 5  # resumed: keep the checkpoint's teacher
    handler(engine)
    assert not torch.equal(teacher.model[0].weight, student[0].weight)
    engine.state.iteration = 0
    handler(engine)
    for t, s in zip(teacher.model.state_dict().values(), student.state_dict().values()):
        assert torch.equal(t, s)


def test_spacingd_keeps_monailabel_image_path(tmp_path):
    from monai.transforms import Compose, Invertd, LoadImaged

    from bundle.data.transforms import Spacingd

    generate_demo_dataset(tmp_path, n_labelled=1, n_unlabelled=0, n_val=0, n_test=0, shape=(24, 24, 8))
    image = str(tmp_path / "imagesTr" / "demo_000.nii.gz")
    pre = Compose([LoadImaged("image", ensure_channel_first=True), Spacingd("image", pixdim=(2.0, 2.0, 2.0))])
    out = pre({"image": image, "image_path": image})  # what MONAI Label's /infer passes
    assert out["image_path"] == image
    assert tuple(out["image"].shape[1:]) == (12, 12, 12)
    out["pred"] = out["image"].clone()
    restored = Invertd("pred", transform=pre, orig_keys="image")(out)
    assert tuple(restored["pred"].shape[1:]) == (24, 24, 8)


def test_datalist_section_never_generates(tmp_path):
    from bundle.data.unlabeled import datalist_section

    missing = tmp_path / "demo" / "datalist.json"
    assert datalist_section(missing, "test") == []
    assert not missing.parent.exists()
    datalist_file = generate_demo_dataset(
        tmp_path / "d", n_labelled=1, n_unlabelled=0, n_val=0, n_test=1, shape=(16, 16, 8)
    )
    assert [Path(e["image"]).name for e in datalist_section(datalist_file, "test")] == ["demo_001.nii.gz"]
