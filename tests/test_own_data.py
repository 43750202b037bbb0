"""Your own data (data.kind python, huggingface; kt_swarm/sources.py), as a new user brings it: the same splits,
batches and augmentation as the built-in kinds, read lazily from Datasets; and the one-line errors of a
factory that fails, returns the wrong shapes or labels out of range, or a given model of the wrong width."""
import pickle

import pytest
import torch
from torch import nn

import kt_swarm
from kt_swarm.config import AugmentConfig, DataConfig
from kt_swarm.data import batch_plan, load_dataset
from support.launch import cli

import own_data  # tests/helpers, on sys.path through support

STRIPES = "own_data:stripes"


def run_config(**data) -> dict:
    """Two tiny participants, one of them built here (models=), on 16 x 16 stripes: seconds on the local engine."""
    return {"dtype": "float64", "transfer": {"epochs": 1, "batch_size": 24}, "eval_batch_size": 64, "control": True,
            "data": {"kind": "python", "factory": STRIPES, **data},
            "participants": [{"name": "mlp", "model": "faulty_models:tiny_mlp", "model_args": {"img_size": 16},
                              "lr": 1e-2}]}


def given_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, classes))


@pytest.mark.fast
def test_a_lazy_dataset_gives_the_same_batches_as_the_same_data_in_memory():
    lazy = load_dataset(DataConfig(kind="python", factory=STRIPES))
    eager = load_dataset(DataConfig(kind="python", factory=STRIPES, args={"lazy": False}))
    assert lazy.items is not None and len(lazy.images) == 0 and eager.items is None and len(eager.images) == 300
    assert (lazy.channels, lazy.image_size, lazy.classes) == (3, 16, ["band0", "band1", "band2"])
    assert all(torch.equal(lazy.splits[k], eager.splits[k]) for k in eager.splits)
    assert torch.equal(lazy.labels, eager.labels)
    plan = batch_plan(lazy.splits["train"], seed=3, epoch=1, step=2, batch_size=16, augment=AugmentConfig(shift=3, hflip=True))
    assert plan.shifts.abs().sum() > 0 and plan.flips.any()
    assert torch.equal(lazy.inputs(plan.ids, plan), eager.inputs(plan.ids, plan))
    assert torch.equal(lazy.target(plan.ids, plan), eager.target(plan.ids, plan))
    # What a Ray actor is sent: no item, the factory's name; it calls the factory again and reads the same.
    sent = pickle.dumps(lazy)
    assert len(sent) < 20_000 < len(pickle.dumps(eager))
    there = pickle.loads(sent)
    assert there.items.parts is None
    there.open()
    assert torch.equal(there.inputs(plan.ids, plan), eager.inputs(plan.ids, plan))
    assert there.fingerprint(there.splits["train"]) == lazy.fingerprint(lazy.splits["train"])


@pytest.mark.fast
def test_splits_are_carved_as_for_every_kind_and_a_factory_may_bring_its_own():
    carved = load_dataset(DataConfig(kind="python", factory=STRIPES, split_seed=5, val_fraction=0.25))
    g = torch.Generator().manual_seed(5)
    by_hand = torch.arange(240)[torch.randperm(240, generator=g)]  # train is the first 240 ids
    assert torch.equal(carved.splits["val"], by_hand[:60]) and torch.equal(carved.splits["train"], by_hand[60:])
    own = load_dataset(DataConfig(kind="python", factory=STRIPES, args={"val": True, "pretrain": 40, "unlabelled": 30,
                                                                       "plain": True}))
    assert {k: len(v) for k, v in own.splits.items()} == {"train": 240, "val": 60, "test": 60, "pretrain": 40,
                                                           "labelled": 210, "unlabelled": 30}
    assert (own.labels[own.splits["unlabelled"]] == -1).all()  # the factory's -1: hidden, like unlabelled_fraction's
    hidden = load_dataset(DataConfig(kind="python", factory=STRIPES, val_fraction=0.2, args={"unlabelled": 100}))
    assert len(hidden.splits["val"]) == 48 and (hidden.labels[hidden.splits["val"]] >= 0).all()  # val: labelled only
    assert len(hidden.splits["unlabelled"]) == 100 and len(hidden.splits["train"]) == 192
    with pytest.raises(kt_swarm.UserError, match="has its own pretrain split; data.pretrain_fraction must be 0"):
        load_dataset(DataConfig(kind="python", factory=STRIPES, pretrain_fraction=0.2, args={"pretrain": 40}))


@pytest.mark.fast
def test_inputs_of_every_usual_form_become_the_same_pixels():
    import numpy as np
    from PIL import Image

    from kt_swarm.sources import as_pixels

    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = torch.from_numpy(gray).unsqueeze(0)
    for form in (Image.fromarray(gray), gray, gray[:, :, None], torch.from_numpy(gray).float() / 255,
                 Image.fromarray(gray.astype(np.uint16) * 257),  # 16-bit: scaled, not clipped
                 Image.fromarray(gray.astype(np.float32) / 255)):  # mode F, 0..1
        assert torch.equal(as_pixels(form), expected), type(form)
    rgb = np.stack([gray, gray // 2, gray // 3], -1)
    assert torch.equal(as_pixels(Image.fromarray(rgb)), torch.from_numpy(rgb).permute(2, 0, 1))


@pytest.mark.fast
def test_dense_targets_come_from_the_items_and_move_with_the_batch():
    data = load_dataset(DataConfig(kind="python", factory="own_data:stripe_masks"), "segmentation")
    assert data.classes == ["background", "band0", "band1", "band2"] and data.targets is None
    plan = batch_plan(data.splits["train"], seed=0, epoch=0, step=0, batch_size=8, augment=AugmentConfig(shift=2, hflip=True))
    image, mask = data.inputs(plan.ids, plan), data.target(plan.ids, plan)
    assert mask.shape == (8, 16, 16) and mask.dtype == torch.long
    bright = image.float().mean(1) > 120  # the stripe's pixels, moved with the image by the same shift and flip
    assert ((mask > 0) == bright).float().mean() > 0.9 and (mask[~bright] <= 0).all()
    assert data.labelled_pixels("train") == 16 * 16 * len(data.splits["train"])


def test_a_hugging_face_dataset_from_disk_or_parquet_reads_like_the_same_data(tmp_path):
    pytest.importorskip("datasets")
    own_data.save_stripes_hf(tmp_path / "disk")
    own_data.save_stripes_hf(tmp_path / "pq", parquet=True)
    columns = {"image": "img", "label": "y"}
    eager = load_dataset(DataConfig(kind="python", factory=STRIPES, args={"lazy": False}))
    for root in ("disk", "pq"):
        data = load_dataset(DataConfig(kind="huggingface", root=str(tmp_path / root), columns=columns))
        assert data.classes == ["top", "middle", "bottom"] and torch.equal(data.labels, eager.labels)
        ids = data.splits["test"][:20]
        assert torch.equal(data.pixels(ids), eager.pixels(ids))  # PNG is lossless
    with pytest.raises(kt_swarm.UserError, match=r"data.columns.image 'image' is not a column of .* \(columns: img, y\)"):
        load_dataset(DataConfig(kind="huggingface", root=str(tmp_path / "disk")))
    cfg = run_config(kind="huggingface", root=str(tmp_path / "disk"), columns=columns)
    del cfg["data"]["factory"]
    result = kt_swarm.run(cfg, models={"net": (given_net(), {"lr": 1e-2})}, out=tmp_path / "run", engine="local")
    assert (result.run_dir / "report.png").is_file()
    assert result.summary["participants"]["net"]["accuracy_after"] > 0.9  # the stripes are easy


BROKEN = [
    ("raises", "data.factory 'own_data:raises' failed: FileNotFoundError: /data/mine/labels.csv"),
    ("not_a_mapping", "data.factory 'own_data:not_a_mapping' returned list, not a mapping of splits"),
    ("out_of_range", "data.factory 'own_data:out_of_range': split 'test' has label 7, outside the 3 classes (0-2)"),
    ("normalised", "train item 0 has float values in -2..1.28, not 0..1 (already normalised?"),
    ("not_square", "data.factory 'own_data:not_square': images must be square, train item 0 is 16x12"),
    ("random_items", "train item 0 differs each time it is read (a random transform?)"),
    ("nowhere:stripes", "data.factory 'nowhere:stripes': cannot import 'nowhere': No module named 'nowhere' (each process"),
]


@pytest.mark.parametrize("factory, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_factory_is_one_line_and_nothing_is_written(factory, message, tmp_path):
    cfg = run_config(factory=factory if ":" in factory else f"own_data:{factory}", max_per_split=40)
    with pytest.raises(kt_swarm.UserError) as e:
        kt_swarm.run(cfg, out=tmp_path / "run", engine="local")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_an_odd_item_found_mid_run_names_itself_and_the_run_can_go_on_once_it_is_fixed(tmp_path):
    """Only each split's item 0 is read before the run (a lazy dataset is not read whole up front): an odd item
    later ends the run at its batch, in one line; the checkpoints stay, so a fixed factory resumes the run."""
    from kt_swarm.rundir import is_resumable

    with pytest.raises(kt_swarm.UserError) as e:
        kt_swarm.run(run_config(factory="own_data:odd_item", max_per_split=40), out=tmp_path / "run", engine="local")
    assert str(e.value) == ("data.factory 'own_data:odd_item': train item 5 has an input of shape (3, 8, 8), "
                            "train item 0's is (3, 16, 16)")
    assert is_resumable(tmp_path / "run")


def test_the_command_line_says_the_same_line_with_exit_2(tmp_path):
    from support.configs import write_config

    path = write_config(tmp_path / "own.yaml", run_config(factory="own_data:out_of_range"))
    code, _, err = cli(["run", str(path), "--engine", "local", "--out", str(tmp_path / "run")])
    assert code == 2
    assert err.strip() == ("kt-swarm: error: data.factory 'own_data:out_of_range': split 'test' has label 7, "
                           "outside the 3 classes (0-2)")
    assert not (tmp_path / "run").exists()


def test_a_given_model_of_the_wrong_width_is_named(tmp_path):
    with pytest.raises(kt_swarm.UserError, match=r"^participant 'net' outputs 7 classes; the data has 3 \(mlp=3, net=7\)$"):
        kt_swarm.run(run_config(), models={"net": (given_net(7), {"lr": 1e-2})}, out=tmp_path / "run", engine="local")
    assert not (tmp_path / "run").exists()
