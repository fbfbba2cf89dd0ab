"""torchvision ResNet-18/50 as backbones. For small images (<= 64 px) the stem becomes a 3x3
stride-1 convolution without max-pooling, the usual CIFAR adaptation. ``weights_path`` initialises
from a local state dict (e.g. ImageNet weights saved with torch.save): keys that do not fit the
adapted stem or the head are reported, not silently ignored."""
from __future__ import annotations

import torch
from torch import nn

from models.base import MODELS, Classifier


class TorchvisionBackbone(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)


def load_backbone_weights(net: nn.Module, path: str) -> list[str]:
    """Load what fits from a torchvision-style state dict; return the keys skipped (shape mismatch)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = net.state_dict()
    skipped = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    if missing:
        raise ValueError(f"{path}: weights lack {len(missing)} backbone keys, e.g. {missing[:5]}")
    net.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return skipped


def _register(name: str) -> None:
    @MODELS.register(name)
    def build(*, num_classes, in_channels, image_size, head="linear", weights_path=None):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if image_size <= 64 or in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 3 if image_size <= 64 else 7, 1 if image_size <= 64 else 2,
                                  1 if image_size <= 64 else 3, bias=False)
        if image_size <= 64:
            net.maxpool = nn.Identity()
        if weights_path:
            load_backbone_weights(net, weights_path)
        embed_dim = net.fc.in_features
        net.fc = nn.Identity()
        return Classifier(TorchvisionBackbone(net), embed_dim, num_classes, head)


for _name in ("resnet18", "resnet50"):
    _register(_name)
