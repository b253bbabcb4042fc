"""The embedded default's network: small, but with BatchNorm and a residual add."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity: the add ties the two outputs' channels together."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels)
        self.conv2 = _conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class DigitsResNet(nn.Module):
    """stem (32) → residual block → downsampling conv (64) → residual block → hidden fc → classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, width)
        self.block1 = ResidualBlock(width)
        self.down = _conv_bn(width, 2 * width, stride=2)
        self.block2 = ResidualBlock(2 * width)
        self.hidden = nn.Linear(2 * width, 2 * width)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.relu(self.stem(x)))
        x = self.block2(torch.relu(self.down(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(torch.relu(self.hidden(x)))


class BranchBlock(nn.Module):
    """Two branches of different widths (a 3×3 conv and a 1×1 conv) whose outputs are
    concatenated and added to a 1×1 projection of the input, as in an Inception-ResNet block:
    one group spans both branches and the projection, its channels in the joined index space."""

    def __init__(self, cin: int, left: int, right: int) -> None:
        super().__init__()
        self.left = _conv_bn(cin, left)
        self.right = nn.Sequential(nn.Conv2d(cin, right, 1, bias=False), nn.BatchNorm2d(right))
        self.project = nn.Sequential(nn.Conv2d(cin, left + right, 1, bias=False), nn.BatchNorm2d(left + right))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.left(x), self.right(x)], dim=1)
        return torch.relu(joined + self.project(x))


class DigitsBranchNet(nn.Module):
    """stem (24) → branch block (24 ‖ 16) → downsampling conv over the 40 joined channels (48)
    → global pooling → classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 24)
        self.branches = BranchBlock(24, 24, 16)
        self.down = _conv_bn(40, 48, stride=2)
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.branches(torch.relu(self.stem(x)))
        x = torch.relu(self.down(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
