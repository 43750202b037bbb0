"""Models by timm name, by import path, from a local weight file; each with its own preprocessing."""
import pytest
import torch
import yaml
from safetensors.torch import save_file

from kt_swarm.config import ParticipantConfig, parse_config
from kt_swarm.build import build_participant
from kt_swarm.data import augment_images, batch_plan, load_dataset
from kt_swarm.errors import UserError
from kt_swarm.models import create_model, preprocess_for
from support import ROOT


def spec(**kw):
    return ParticipantConfig(**{"name": "p", "lr": 1e-3, **kw})


@pytest.mark.fast
def test_timm_name_built_for_the_data():
    model = create_model(spec(model="resnet10t", weights="none"), num_classes=10, in_chans=1, seed=0)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    prep = preprocess_for(model, spec(model="resnet10t", weights="none"), in_chans=1, image_size=28, dtype=torch.float32)
    # Trained here: native size; mean/std from timm's data config, folded to one channel.
    assert prep.input_size == 28 and len(prep.mean) == 1
    assert prep.mean[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3)


@pytest.mark.fast
def test_preprocessing_overrides():
    s = spec(model="resnet10t", weights="none", input_size=32, mean=[0.5], std=[0.2])
    prep = preprocess_for(create_model(s, num_classes=10, in_chans=1, seed=0), s, in_chans=1, image_size=28, dtype=torch.float64)
    assert (prep.input_size, prep.mean, prep.std, prep.dtype) == (32, (0.5,), (0.2,), torch.float64)


def test_autocast_forward_gives_float32_logits_and_trains(tmp_path):
    cfg = parse_config(yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()),
                       ["autocast=bfloat16", "device=cpu", "data.max_per_split=64"])
    data = load_dataset(cfg.data)
    p = build_participant(cfg, 1, data)  # the ViT: its matmuls run in bf16 under autocast
    plan = batch_plan(data.splits["train"], seed=0, epoch=0, step=0, batch_size=8, augment=cfg.data.augment)
    p.reset_optimizer("adam", 1e-3, 0.0)
    logits = p.forward(data, plan)
    assert logits.dtype == torch.float32  # losses are never computed in bf16
    with torch.no_grad():
        plain = p.model(p.preprocess(augment_images(data.images[plan.ids], plan), p.device))
    assert not torch.equal(logits, plain)  # the forward really ran in bf16 ...
    torch.testing.assert_close(logits, plain, atol=0.1, rtol=0.1)  # ... and agrees to bf16 precision
    before = [w.detach().clone() for w in p.model.parameters()]
    torch.nn.functional.cross_entropy(logits, data.labels[plan.ids]).backward()
    p.optimizer.step()
    assert all(w.dtype == torch.float32 for w in p.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, p.model.parameters()))


@pytest.mark.fast
def test_import_path_factory():
    s = spec(model="timm.models.mlp_mixer:MlpMixer", model_args=dict(img_size=28, patch_size=7, num_blocks=1, embed_dim=32))
    model = create_model(s, num_classes=5, in_chans=1, seed=0)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 5)


@pytest.mark.fast
def test_seeded_initialisation_is_reproducible():
    s = spec(model="resnet10t", weights="none")
    a, b = (create_model(s, num_classes=10, in_chans=1, seed=3) for _ in range(2))
    c = create_model(s, num_classes=10, in_chans=1, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1[0].weight, c.conv1[0].weight)


@pytest.mark.fast
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weight_file_through_timm_overlay(tmp_path, suffix):
    source = create_model(spec(model="resnet10t", weights="none"), num_classes=10, in_chans=1, seed=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_model(spec(model="timm/resnet10t", weights=str(path)), num_classes=10, in_chans=1, seed=0)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.fast
def test_errors_name_the_participant_and_model(tmp_path):
    with pytest.raises(UserError, match="participant 'p': unknown model 'resnet_nope'"):
        create_model(spec(model="resnet_nope"), num_classes=10, in_chans=1, seed=0)
    with pytest.raises(UserError, match="weight file .* does not exist"):
        create_model(spec(model="resnet10t", weights=str(tmp_path / "missing.pth")), num_classes=10, in_chans=1, seed=0)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="participant 'p'"):
        create_model(spec(model="timm.models.mlp_mixer:MlpMixer", weights=str(bad), model_args=dict(img_size=28, patch_size=7)),
                     num_classes=10, in_chans=1, seed=0)
    with pytest.raises(UserError, match="is not a callable"):
        create_model(spec(model="timm.models:nothing_here"), num_classes=10, in_chans=1, seed=0)
