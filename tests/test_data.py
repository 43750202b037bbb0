"""Batch plans are the same for every participant; datasets load from idx files and folders."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kt_swarm.config import AugmentConfig, DataConfig
from kt_swarm.data import Preprocess, augment_images, batch_plan, load_dataset
from kt_swarm.errors import UserError
from support.datasets import write_folder

AUG = AugmentConfig(shift=2, hflip=True)


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(DataConfig(pretrain_fraction=0.4, val_fraction=0.1))


@pytest.mark.fast
def test_fashion_mnist_splits_are_disjoint_and_cover_train(fmnist):
    s = fmnist.splits
    assert (len(s["pretrain"]), len(s["val"]), len(s["train"]), len(s["test"])) == (24000, 6000, 30000, 10000)
    train_side = torch.cat([s["pretrain"], s["val"], s["train"]])
    assert len(set(train_side.tolist())) == 60000 and train_side.max() < 60000
    assert s["test"].min() == 60000
    assert fmnist.images.shape[1:] == (1, 28, 28) and fmnist.num_classes == 10


@pytest.mark.fast
def test_plans_depend_only_on_seed_epoch_step(fmnist):
    ids = fmnist.splits["train"]
    a = batch_plan(ids, seed=3, epoch=1, step=5, batch_size=64, augment=AUG)
    b = batch_plan(ids, seed=3, epoch=1, step=5, batch_size=64, augment=AUG)
    c = batch_plan(ids, seed=3, epoch=2, step=5, batch_size=64, augment=AUG)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.shifts, b.shifts) and torch.equal(a.flips, b.flips)
    assert not torch.equal(a.ids, c.ids)
    # An epoch visits each sample at most once.
    epoch = torch.cat([batch_plan(ids, seed=3, epoch=0, step=s, batch_size=1000, augment=AUG).ids for s in range(30)])
    assert len(set(epoch.tolist())) == 30000


@pytest.mark.fast
def test_plans_are_identical_in_another_process():
    code = (
        "import torch; from kt_swarm.config import AugmentConfig; from kt_swarm.data import batch_plan;"
        "p = batch_plan(torch.arange(5000), seed=11, epoch=2, step=7, batch_size=32, augment=AugmentConfig(shift=3, hflip=True));"
        "print(p.ids.tolist(), p.shifts.tolist(), p.flips.tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    p = batch_plan(torch.arange(5000), seed=11, epoch=2, step=7, batch_size=32, augment=AugmentConfig(shift=3, hflip=True))
    assert out == str(p.ids.tolist()) + " " + str(p.shifts.tolist()) + " " + str(p.flips.tolist())


@pytest.mark.fast
def test_participants_see_the_same_augmented_samples_through_their_own_preprocessing(fmnist):
    plan = batch_plan(fmnist.splits["train"], seed=0, epoch=0, step=0, batch_size=16, augment=AUG)
    images = augment_images(fmnist.images[plan.ids], plan)
    small = Preprocess(in_chans=1, input_size=28, mean=(0.5,), std=(0.25,), dtype=torch.float64)
    rgb_big = Preprocess(in_chans=3, input_size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), dtype=torch.float64)
    xa, xb = small(images), rgb_big(images)
    assert xa.shape == (16, 1, 28, 28) and xb.shape == (16, 3, 56, 56)
    # Undo each participant's normalisation and resolution: the same pixels come back.
    raw_a = xa * 0.25 + 0.5
    raw_b = xb * torch.tensor(rgb_big.std, dtype=torch.float64).view(1, 3, 1, 1) + torch.tensor(rgb_big.mean, dtype=torch.float64).view(1, 3, 1, 1)
    up = torch.nn.functional.interpolate(raw_a, size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(raw_b[:, :1], up)
    torch.testing.assert_close(raw_b[:, 0], raw_b[:, 2])


@pytest.mark.fast
def test_shrinking_is_antialiased():
    # A one-pixel checkerboard halved: averaged to flat grey, not aliased into stripes.
    board = ((torch.arange(28).view(-1, 1) + torch.arange(28)) % 2 * 255).to(torch.uint8).view(1, 1, 28, 28)
    x = Preprocess(in_chans=1, input_size=14, mean=(0.0,), std=(1.0,))(board)
    torch.testing.assert_close(x, torch.full_like(x, 0.5), atol=0.02, rtol=0)


@pytest.mark.fast
def test_shift_moves_content_and_flip_mirrors(fmnist):
    img = fmnist.images[fmnist.splits["train"][:1]]
    from kt_swarm.data import BatchPlan

    plan = BatchPlan(torch.tensor([0]), torch.tensor([[2, -1]]), torch.tensor([False]))
    shifted = augment_images(img, plan)
    assert torch.equal(shifted[0, 0, 2:, :-1], img[0, 0, :-2, 1:])
    assert (shifted[0, 0, :2] == 0).all()
    flipped = augment_images(img, BatchPlan(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.long), torch.tensor([True])))
    assert torch.equal(flipped, img.flip(-1))


@pytest.mark.fast
def test_folder_dataset_reads_pngs_and_carves_val(tmp_path, fmnist):
    root = write_folder(tmp_path / "ds", fmnist)
    data = load_dataset(DataConfig(kind="folder", root=str(root), val_fraction=0.25))
    assert data.classes == ["class0", "class1", "class2"]
    assert data.images.shape[1:] == (1, 28, 28) and data.images.dtype == torch.uint8
    assert len(data.splits["val"]) == 9 and len(data.splits["train"]) == 27 and len(data.splits["test"]) == 36
    # Pixels survive the round trip through PNG.
    first = np.asarray(Image.open(root / "test" / "class0" / "0.png"))
    assert torch.equal(data.images[data.splits["test"][0], 0], torch.from_numpy(first.copy()))


@pytest.mark.fast
def test_folder_with_own_val_split(tmp_path, fmnist):
    root = write_folder(tmp_path / "ds", fmnist, val=True)
    data = load_dataset(DataConfig(kind="folder", root=str(root), val_fraction=0.25))
    assert len(data.splits["val"]) == 36 and len(data.splits["train"]) == 36


@pytest.mark.fast
def test_folder_errors_name_the_problem(tmp_path, fmnist):
    root = write_folder(tmp_path / "ds", fmnist)
    (root / "train" / "class1" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="0.png' is corrupt"):
        load_dataset(DataConfig(kind="folder", root=str(root)))
    data = load_dataset(DataConfig(kind="folder", root=str(root), skip_corrupt=True))
    assert data.skipped == 1 and len(data.splits["train"]) + len(data.splits["val"]) == 35
    (root / "test" / "class2").rename(root / "elsewhere")
    (root / "test" / "class2").mkdir()
    with pytest.raises(UserError, match="class2' is empty"):
        load_dataset(DataConfig(kind="folder", root=str(root), skip_corrupt=True))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path / "nope")))


@pytest.mark.fast
def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_dataset(DataConfig(root=str(tmp_path)))


@pytest.mark.fast
def test_all_corrupt_class_is_an_error_even_when_skipping(tmp_path, fmnist):
    root = write_folder(tmp_path / "ds", fmnist, per_class=2)
    for f in (root / "train" / "class0").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(UserError, match="class0' has no readable images"):
        load_dataset(DataConfig(kind="folder", root=str(root), skip_corrupt=True))


@pytest.mark.fast
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, fmnist):
    root = write_folder(tmp_path / "ds", fmnist, per_class=2, val=True)
    wide = np.array([[0, 32896], [65535, 257]], dtype=np.uint16).repeat(14, 0).repeat(14, 1)
    Image.fromarray(wide).save(root / "train" / "class1" / "0.png")
    data = load_dataset(DataConfig(kind="folder", root=str(root), val_fraction=0.0))
    img = data.images[data.splits["train"]][data.labels[data.splits["train"]] == 1][0, 0]
    assert img.shape == (28, 28) and img[0, 0] == 0 and img[0, 27] == 128 and img[27, 0] == 255 and img[27, 27] == 1


@pytest.mark.fast
def test_hidden_labels_are_gone_from_memory_and_the_control_split_is_the_rest(fmnist):
    data = load_dataset(DataConfig(pretrain_fraction=0.4, val_fraction=0.1, unlabelled_fraction=0.9))
    train, hidden, labelled = data.splits["train"], data.splits["unlabelled"], data.splits["labelled"]
    assert len(hidden) == round(0.9 * len(train)) and len(labelled) + len(hidden) == len(train)
    assert (data.labels[hidden] == -1).all() and (data.labels[labelled] >= 0).all()
    assert torch.equal(labelled, train[torch.isin(train, labelled)])  # in the transfer split's order
    for split in ("val", "test", "pretrain"):  # evaluation and pretraining keep every label
        assert torch.equal(data.labels[data.splits[split]], fmnist.labels[fmnist.splits[split]])


@pytest.mark.fast
def test_transfer_samples_shrinks_the_transfer_split_only(fmnist):
    data = load_dataset(DataConfig(pretrain_fraction=0.4, val_fraction=0.1, transfer_samples=1000))
    assert torch.equal(data.splits["train"], fmnist.splits["train"][:1000])
    for split in ("val", "test", "pretrain"):
        assert torch.equal(data.splits[split], fmnist.splits[split])


@pytest.mark.fast
def test_disjoint_zoo_members_pretrain_on_their_own_share(fmnist):
    from kt_swarm.build import pretrain_ids
    from kt_swarm.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml", ["zoo.disjoint=true"])
    shares = [pretrain_ids(cfg, i, fmnist) for i in range(3)]
    assert sum(len(s) for s in shares) == len(fmnist.splits["pretrain"])
    assert torch.equal(torch.cat(shares), fmnist.splits["pretrain"])  # disjoint, and together the whole split
    cfg.zoo.disjoint = False
    assert all(torch.equal(pretrain_ids(cfg, i, fmnist), fmnist.splits["pretrain"]) for i in range(3))
