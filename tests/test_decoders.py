"""Dense outputs from timm backbones of several families (kt_swarm/decoders.py)."""
import pytest
import timm
import torch

from kt_swarm.decoders import DenseModel
from kt_swarm.objectives import swarm_loss

BACKBONES = {
    "resnet10t": dict(channels=[16, 32, 64, 128], stem_width=16),
    "vit_tiny_patch16_224": dict(img_size=56, patch_size=7, embed_dim=64, depth=3, num_heads=2),
    "mobilenetv3_small_100": {},
    "convnext_atto": {},
}


@pytest.mark.parametrize("name", BACKBONES)
def test_every_family_answers_per_input_pixel_and_learns(name):
    torch.manual_seed(0)
    backbone = timm.create_model(name, features_only=True, in_chans=1, pretrained=False, **BACKBONES[name])
    seg, sal = DenseModel(backbone, 11), DenseModel(timm.create_model(name, features_only=True, in_chans=1, **BACKBONES[name]), 1, squeeze=True)
    x = torch.randn(2, 1, 56, 56)
    assert seg(x).shape == (2, 11, 56, 56) and sal(x).shape == (2, 56, 56)
    # Both tasks' swarm losses reach the backbone's first layer.
    target = torch.randint(-1, 11, (2, 56, 56))
    loss = swarm_loss(torch.stack([seg(x), seg(x.flip(-1))]), target, task="segmentation", unit="pixel")
    loss = loss + swarm_loss(torch.stack([sal(x), sal(x.flip(-1))]), torch.rand(2, 56, 56), task="saliency")
    loss.backward()
    first = next(p for p in seg.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert next(p for p in sal.backbone.parameters()).grad.abs().sum() > 0
