"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 16-32-64 channels, n basic blocks each,
identity shortcuts with zero-padded channels ("option A"), as in the LDAM-DRW reference code.
ResNet-32 is n = 5. Works for any input size and channel count (global average pooling)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.base import MODELS, Classifier


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNetBackbone(nn.Module):
    def __init__(self, blocks: int, in_channels: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, planes = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(planes, width, 2 if stage > 0 and b == 0 else 1))
                planes = width
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


def _register(name: str, blocks: int) -> None:
    @MODELS.register(name)
    def build(*, num_classes, in_channels, image_size, head="linear", weights_path=None):
        if weights_path:
            raise ValueError(f"{name} has no published weights; use --pretrained for an SSP checkpoint")
        model = Classifier(CifarResNetBackbone(blocks, in_channels), 64, num_classes, head)
        if isinstance(model.head, nn.Linear):
            nn.init.kaiming_normal_(model.head.weight)
        return model


for _name, _blocks in (("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9)):
    _register(_name, _blocks)
