"""Segmentation and saliency as a user runs them (issue 13): config keys, the scenes and folder data kinds,
dense targets under augmentation, the task metrics, and whole runs on the local engine. (Ray against local
in float64: tests/test_swarm.py.)"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kt_swarm.config import parse_config
from kt_swarm.coordinator import run
from kt_swarm.data import batch_plan, load_dataset
from kt_swarm.errors import UserError
from kt_swarm.metrics import complementary, correct, flips, miou, task_metrics
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.tasks import cc, kld, nss, saliency_metrics, sim
from support.configs import dense_config
from support.launch import kt_swarm


# ----------------------------------------------------------------------------- config


@pytest.mark.fast
@pytest.mark.parametrize("overrides,message", [
    ({"task": "segmentation", "data": {"kind": "fashion_mnist"}}, "task segmentation reads scenes, segmentation_folder, python, huggingface"),
    ({"task": "classification", "data": {"kind": "scenes"}}, "task classification reads fashion_mnist, folder, python, huggingface"),
    ({"task": "saliency", "transfer": {"unit": "pixel"}}, "task saliency partitions by sample, got pixel"),
    ({"task": "classification", "data": {"kind": "fashion_mnist"}, "transfer": {"unit": "image"}}, "task classification partitions by sample"),
    ({"data": {"kind": "scenes", "unlabelled_fraction": 0.5}}, "'data.unlabelled_fraction': not available for task segmentation"),
    ({"transfer": {"calibrate": True}}, "'transfer.calibrate': not available"),
    ({"self_training": True}, "'self_training': not available"),
    ({"data": {"kind": "scenes", "scenes": {"canvas": 20}}}, "'data.scenes.canvas': must be at least 28"),
])
def test_what_a_task_cannot_take_is_one_line(overrides, message):
    raw = dense_config()
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    with pytest.raises(UserError, match=message):
        parse_config(raw)


@pytest.mark.fast
def test_the_unit_defaults_to_the_task_s_first():
    assert parse_config(dense_config("segmentation")).transfer.unit == "pixel"
    assert parse_config(dense_config("saliency")).transfer.unit == "sample"


# ----------------------------------------------------------------------------- data


@pytest.mark.fast
def test_scenes_give_masks_or_maps_and_augment_them_with_their_images():
    seg = load_dataset(parse_config(dense_config()).data, "segmentation")
    assert seg.images.shape == (208, 1, 32, 32) and seg.targets.shape == (208, 32, 32)
    assert seg.classes[0] == "background" and seg.num_classes == 11
    assert {k: len(v) for k, v in seg.splits.items() if k != "unlabelled"} == {
        "train": 128, "val": 32, "pretrain": 0, "test": 48, "labelled": 128}
    plan = batch_plan(seg.splits["train"], seed=1, epoch=0, step=0, batch_size=16, augment=parse_config(dense_config()).data.augment)
    assert plan.shifts.abs().max() > 0 and plan.flips.any()
    from kt_swarm.data import augment_images

    images, target = augment_images(seg.images[plan.ids], plan)[:, 0], seg.target(plan.ids, plan)
    assert target.dtype == torch.int64 and target.shape == (16, 32, 32)
    # The mask moved with its image: bright pixels are items (a class or an ignored rim), background is dark.
    assert (target[images >= 16] != 0).all() and (images[target == 0] < 16).all()
    for i, (dy, dx) in enumerate(plan.shifts.tolist()):  # the border a shift brings in is ignored, not background
        if dy > 0:
            assert (target[i, :dy] == -1).all()
        if dx < 0 and not plan.flips[i]:
            assert (target[i, :, dx:] == -1).all()
    sal = load_dataset(parse_config(dense_config("saliency")).data, "saliency")
    maps = sal.target(sal.splits["test"])
    assert sal.num_classes == 1 and maps.dtype == torch.float32 and maps.amax(dim=(1, 2)).eq(255).all()
    assert torch.equal(sal.images, seg.images)  # the same scenes


def write_folder(root, task="segmentation", n=(12, 4, 6), size=32, seed=0):
    """A dataset in the documented layout: <split>/images/<name>.png beside <split>/masks (or maps)/<name>.png."""
    rng = np.random.default_rng(seed)
    other = "masks" if task == "segmentation" else "maps"
    root.mkdir(parents=True)
    if task == "segmentation":
        (root / "classes.txt").write_text("background\nsquare\ndisc\n")
    for split, count in zip(("train", "val", "test"), n):
        (root / split / "images").mkdir(parents=True)
        (root / split / other).mkdir()
        for k in range(count):
            image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            top, left = rng.integers(0, size - 12, 2)
            shape = 1 + k % 2
            mask[top:top + 12, left:left + 12] = shape
            image[mask == shape] = (200, 60, 60) if shape == 1 else (60, 60, 200)
            mask[top, left:left + 12] = 255  # a rim of ignored pixels
            Image.fromarray(image).save(root / split / "images" / f"{k:03d}.png")
            target = mask if task == "segmentation" else (mask > 0).astype(np.uint8) * 200 + 10
            Image.fromarray(target).save(root / split / other / f"{k:03d}.png")
    return root


@pytest.mark.fast
def test_a_folder_dataset_in_the_documented_layout_loads(tmp_path):
    raw = dense_config(data={"kind": "segmentation_folder", "root": str(write_folder(tmp_path / "seg"))})
    data = load_dataset(parse_config(raw).data, "segmentation")
    assert data.classes == ["background", "square", "disc"] and data.images.shape == (22, 3, 32, 32)
    assert {len(data.splits[s]) for s in ("train", "val", "test")} == {12, 4, 6}
    assert set(data.target(data.splits["train"]).unique().tolist()) == {-1, 0, 1, 2}
    raw = dense_config("saliency", data={"kind": "saliency_folder", "root": str(write_folder(tmp_path / "sal", "saliency"))})
    maps = load_dataset(parse_config(raw).data, "saliency").target(torch.arange(3))
    assert set(maps.unique().tolist()) == {10.0, 210.0}


@pytest.mark.fast
@pytest.mark.parametrize("damage,message", [
    (lambda r: (r / "train/masks/003.png").unlink(), r"image '.*train/images/003.png' has no mask in '.*train/masks' \(1 unpaired\)"),
    (lambda r: Image.fromarray(np.zeros((16, 32), np.uint8)).save(r / "test/masks/001.png"),
     r"mask '.*test/masks/001.png' is 32x16, its image 32x32"),
    (lambda r: Image.fromarray(np.full((32, 32), 7, np.uint8)).save(r / "val/masks/002.png"),
     r"mask '.*val/masks/002.png' has label 7, not a class of classes.txt \(0-2\) or data.ignore_index 255"),
    (lambda r: (r / "classes.txt").unlink(), r"has no classes.txt"),
    (lambda r: (r / "test/masks/000.png").write_bytes(b"not a png"), r"image '.*test/masks/000.png' is corrupt"),
])
def test_bad_masks_and_missing_pairs_are_one_line_and_exit_2(tmp_path, damage, message):
    root = write_folder(tmp_path / "seg")
    damage(root)
    raw = dense_config(data={"kind": "segmentation_folder", "root": str(root)})
    with pytest.raises(UserError, match=message):
        load_dataset(parse_config(raw).data, "segmentation")


def test_a_bad_folder_ends_the_cli_in_one_line(tmp_path):
    root = write_folder(tmp_path / "seg")
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(root / "train/masks/000.png")
    config = tmp_path / "seg.yaml"
    config.write_text(json.dumps(dense_config(data={"kind": "segmentation_folder", "root": str(root)})))
    done = kt_swarm("run", config, "--engine", "local", "--out", tmp_path / "run")
    assert done.returncode == 2 and "has label 9" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- metrics


@pytest.mark.fast
def test_miou_and_pixel_accuracy_count_labelled_pixels_only():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, -1]]])  # one 2 x 4 image, two ignored pixels
    preds = torch.tensor([[[[0, 1, 1, 1], [2, 2, 0, 0]]], [[[0, 0, 1, 1], [2, 2, 1, 2]]]], dtype=torch.uint8)
    # First: class 0 IoU 1/2, class 1 2/3, class 2 1 -> mIoU 13/18; the second is right wherever it counts.
    assert miou(preds, target, 3) == pytest.approx([13 / 18, 1.0])
    assert task_metrics(preds, target, "segmentation", 3)["pixel_accuracy"] == pytest.approx([5 / 6, 1.0])
    assert correct(preds, target, "segmentation").shape == (2, 6)
    gained, lost = flips(preds, preds.flip(0), target, "segmentation")
    assert gained == pytest.approx([1 / 6, 0]) and lost == pytest.approx([0, 1 / 6])
    assert complementary(preds, target, "segmentation") == pytest.approx([1 / 6, 0])
    assert flips(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), torch.zeros(1, 2, 2), "saliency") == (None, None)


@pytest.mark.fast
def test_saliency_metrics_have_their_textbook_values():
    gt = torch.tensor([[0.0, 1.0, 3.0, 0.0]], dtype=torch.float64)
    same = gt / gt.sum()
    assert float(kld(gt, same)) == pytest.approx(0, abs=1e-6) and float(cc(same, gt)) == pytest.approx(1)
    assert float(sim(same, gt)) == pytest.approx(1)
    assert float(sim(torch.tensor([[1.0, 0, 0, 0]]), gt)) == pytest.approx(0)
    # NSS with a binary fixation map is the standardised map's mean at the fixations.
    pred, fixations = torch.tensor([[1.0, 2.0, 3.0, 6.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    z = (pred - pred.mean()) / pred.std()
    assert float(nss(pred, fixations)) == pytest.approx(float(z[0, 2:].mean()))
    logits = torch.log(torch.tensor([[[1.0, 1.0], [1.0, 1.0]]]))  # a uniform map
    values = saliency_metrics(logits, torch.tensor([[[0.0, 1.0], [1.0, 2.0]]]))
    assert values.shape == (1, 4) and float(values[0, 2]) == pytest.approx(0.75) and float(values[0, 1]) == 0


# ----------------------------------------------------------------------------- whole runs


def test_a_segmentation_folder_runs_end_to_end_and_reports_miou(tmp_path):
    raw = dense_config(data={"kind": "segmentation_folder", "root": str(write_folder(tmp_path / "seg")),
                             "augment": {"shift": 2, "hflip": True}}, transfer={"epochs": 2, "batch_size": 4})
    with RunDir(tmp_path / "run") as rd:
        summary = run(parse_config(raw), rd, "local")
    assert (summary["task"], summary["unit"], summary["metric"]) == ("segmentation", "pixel", "miou")
    p = summary["participants"]["vit"]
    assert set(p["metrics"]) == {"start", "transfer", "control"} and set(p["metrics"]["start"]) == {"miou", "pixel_accuracy"}
    assert p["miou_after"] == p["metrics"]["transfer"]["miou"] and p["positive_flips"] is not None
    assert "val_miou" in p and "val_miou_mean" in summary and "accuracy_after" not in p
    # The role matrix counts pixels: far more than the 12 training images could give as samples.
    assert sum(map(sum, summary["role_matrix"])) > 12 * 2
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Test mIoU in %" in report and "partitioned by pixels" in report and "| vit | control |" in report
    with np.load(tmp_path / "run" / "examples.npz") as f:  # report.png's pictures: truth beside every participant
        assert f["truth"].shape == (4, 32, 32) and f["arm_transfer"].shape == (2, 4, 32, 32) and f["arm_start"].max() <= 2


def test_a_saliency_run_reports_every_saliency_metric_and_no_flips(tmp_path):
    with RunDir(tmp_path / "run") as rd:
        summary = run(parse_config(dense_config("saliency")), rd, "local")
    p = summary["participants"]["resnet"]
    assert summary["metric"] == "cc" and set(p["metrics"]["transfer"]) == {"cc", "kld", "sim", "nss"}
    assert p["positive_flips"] is None and p["complementary"] is None
    assert -1 <= p["cc_after"] <= 1 and p["metrics"]["start"]["kld"] > 0
    records = read_records(tmp_path / "run")
    test = [r for r in records if r.get("event") == "test"]
    assert [r["arm"] for r in test] == ["start", "transfer", "control"] and all("test_kld" in r for r in test)
    assert all(r["test_cc"]["resnet"] == summary["participants"]["resnet"]["metrics"][r["arm"]]["cc"] for r in test)
    assert all("val_cc" in r for r in records if r.get("event") == "eval")
