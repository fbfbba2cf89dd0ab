"""What every architecture shares: the registry, the ``Classifier`` (backbone + head), the heads,
the wrappers of the exported model. Architectures import this module; ``models`` (the package)
imports the architectures to register them, so imports run one way."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.registry import Registry

MODELS: Registry = Registry("model")


class NormedLinear(nn.Module):
    """Cosine classifier (the head LDAM uses): logits are ``scale`` times the cosines between the
    normalised embedding and the class weights. The scale is part of the model, so softmax
    probabilities (calibration, pseudo-label confidence) are those the loss trained."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=0))


def make_head(kind: str, in_features: int, num_classes: int, scale: float = 30.0) -> nn.Module:
    if kind == "normed":
        return NormedLinear(in_features, num_classes, scale)
    return nn.Linear(in_features, num_classes)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int, head: str = "linear",
                 head_scale: float = 30.0):
        super().__init__()
        self.backbone, self.embed_dim = backbone, embed_dim
        self.head = make_head(head, embed_dim, num_classes, head_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class PosthocAdjusted(nn.Module):
    """A classifier whose logits are adjusted by - tau * log prior (Menon et al.) at prediction."""

    def __init__(self, model: nn.Module, log_prior: torch.Tensor, tau: float):
        super().__init__()
        self.model, self.tau = model, tau
        self.register_buffer("log_prior", log_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) - self.tau * self.log_prior


class Standardized(nn.Module):
    """The deployable form: images as float NCHW in [0, 1] in, logits out; the training
    normalisation (per-channel mean/std of the labeled split) travels inside the model."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int, head: str = "linear",
                 head_scale: float = 30.0, weights_path: str | None = None) -> Classifier:
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size, head=head,
                             weights_path=weights_path)
    if isinstance(model.head, NormedLinear):
        model.head.scale = head_scale
    return model

