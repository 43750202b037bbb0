"""Dense outputs from any timm backbone (issue 13): segmentation logits [B, C, H, W] or one saliency map [B, H, W].

timm builds the backbone with `features_only=True`, so every family that supports it can take part (CNNs
give a pyramid of strides, ViTs maps at one stride); ours is only the light decoder on top, an FPN-style
top-down sum of 1x1-projected features, one 3x3 conv, a 1x1 classifier, and a bilinear upsampling to the
input size: every participant answers per input pixel, whatever its strides.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseModel(nn.Module):
    def __init__(self, backbone: nn.Module, out_channels: int, width: int = 64, squeeze: bool = False):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in backbone.feature_info.channels())
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(width, out_channels, 1)
        self.squeeze = squeeze  # one map: [B, H, W] rather than [B, 1, H, W]
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})  # the backbone's mean, std and input size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        top = self.lateral[-1](features[-1])
        for feature, lateral in zip(reversed(features[:-1]), reversed(self.lateral[:-1])):
            top = F.interpolate(top, size=feature.shape[-2:], mode="bilinear", align_corners=False) + lateral(feature)
        out = F.interpolate(self.head(self.fuse(top)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out.squeeze(1) if self.squeeze else out
