"""Autoencoder-based classifiers (as earlier imbalanced-CIFAR work used): an encoder-decoder with a
classifier head on the pooled encoder output. ``forward(x, output=...)`` classifies, reconstructs
or both (the decoder sees the encoder's feature maps, with skips for the U-Net);
``classifier()`` is the deployable model without the decoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.base import MODELS, Classifier


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths=(32, 64, 128)):
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    def __init__(self, out_channels: int, widths=(32, 64, 128)):
        super().__init__()
        rev = widths[::-1]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(rev[:-1], rev[1:]))
        self.blocks = nn.ModuleList(_block(2 * b, b) for b in rev[1:])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = F.interpolate(up(x), size=skip.shape[-2:])  # odd sizes: match the skip exactly
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


class MobileNetEncoder(nn.Module):
    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        import torchvision

        features = torchvision.models.mobilenet_v2(weights=None).features
        stem = features[0][0]
        features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1 if image_size <= 64 else 2, 1, bias=False)
        self.features, self.out_channels = features, 1280

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.features(x)]


class UpsamplingDecoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, image_size: int, widths=(256, 128, 64, 32)):
        super().__init__()
        chans = (in_channels, *widths)
        self.ups = nn.Sequential(*(nn.Sequential(nn.ConvTranspose2d(a, b, 2, stride=2), nn.BatchNorm2d(b),
                                                 nn.ReLU(inplace=True)) for a, b in zip(chans[:-1], chans[1:])))
        self.out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        self.size = image_size

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return F.interpolate(self.out(self.ups(feats[-1])), size=(self.size, self.size), mode="bilinear",
                             align_corners=False)


class PooledEncoder(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.encoder(x)[-1], 1).flatten(1)


class AutoencoderClassifier(Classifier):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int, head: str = "linear"):
        super().__init__(PooledEncoder(encoder), encoder.out_channels, num_classes, head)
        self.decoder = decoder

    def forward(self, x: torch.Tensor, output: str = "logits"):
        """``logits``, ``reconstruction`` or ``both`` (a tuple). One forward method, so DDP sees every mode."""
        feats = self.backbone.encoder(x)
        if output == "reconstruction":
            return self.decoder(feats)
        logits = self.head(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1))
        return (logits, self.decoder(feats)) if output == "both" else logits

    def classifier(self) -> Classifier:
        """The same encoder and head as a plain Classifier: what gets exported."""
        plain = Classifier(nn.Identity(), self.embed_dim, 1)
        plain.backbone, plain.head = self.backbone, self.head
        return plain


@MODELS.register("unet_ae")
def unet_ae(*, num_classes, in_channels, image_size, head="linear", weights_path=None):
    return AutoencoderClassifier(UNetEncoder(in_channels), UNetDecoder(in_channels), num_classes, head)


@MODELS.register("mobilenetv2_ae")
def mobilenetv2_ae(*, num_classes, in_channels, image_size, head="linear", weights_path=None):
    encoder = MobileNetEncoder(in_channels, image_size)
    return AutoencoderClassifier(encoder, UpsamplingDecoder(encoder.out_channels, in_channels, image_size),
                                 num_classes, head)
