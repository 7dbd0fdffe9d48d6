"""Embedding networks: ResNet18 (one grey input channel, 8 outputs) and a small fast CNN.

The ResNet18 is He et al. 2016's 18-layer residual network with the standard ImageNet stem and
stages, changed only as idtracker.ai v6 does (Torrents et al. 2025, Methods "Architectures"):
``conv1`` takes 1 channel and the last layer has 8 outputs. Parameter count: torchvision's
resnet18 has 11,689,512; conv1 1 channel saves 2 * 64 * 7 * 7 = 6,272 and fc 512->8 instead of
512->1000 saves 508,896, so this one has 11,174,344 (11.17 M).
"""
from __future__ import annotations

import torch
from torch import nn

NETWORKS = ("resnet18", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet18 embedding: (B, 1, S, S) float -> (B, embedding_dim) float."""

    def __init__(self, in_channels: int = 1, embedding_dim: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        layers = []
        in_ch = 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_ch, width, stride), BasicBlock(width, width, 1)))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, embedding_dim)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallNet(nn.Module):
    """A 4-stage CNN (16-32-64-128 channels, ~0.1 M parameters) for quick runs and tests.

    (B, 1, S, S) float -> (B, embedding_dim) float; any S >= 8.
    """

    def __init__(self, in_channels: int = 1, embedding_dim: int = 8) -> None:
        super().__init__()
        stages = []
        in_ch = in_channels
        for width in (16, 32, 64, 128):
            stages += [nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if width != 128:
                stages.append(nn.MaxPool2d(2))
            in_ch = width
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, embedding_dim)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def _init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions, unit BatchNorm (as torchvision's ResNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(network: str, embedding_dim: int = 8) -> nn.Module:
    """``"resnet18"`` or ``"small"``; one grey input channel."""
    if network == "resnet18":
        return ResNet18(1, embedding_dim)
    if network == "small":
        return SmallNet(1, embedding_dim)
    raise ValueError(f"unknown network {network!r}; use one of {NETWORKS}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
