"""Torch definitions of the reference zoo models (all return logits, no softmax)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LeNet300",
    "LeNet5",
    "Bottleneck",
    "ResNet50ish",
    "lenet300",
    "lenet5",
    "resnet50ish",
    "MODELS",
    "count_params",
]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class LeNet300(nn.Module):
    """LeNet-300-100: MLP 784-300-100-10 with ReLU; input (N,1,28,28), flattened inside."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5 as in Deep Compression: conv20@5 - pool2 - conv50@5 - pool2 - fc500 - ReLU - fc10."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + idt)


class ResNet50ish(nn.Module):
    """ResNet-50-sized CNN (bottlenecks [3,4,6,3], ~25.6M params) for engine benchmarks."""

    def __init__(
        self,
        image_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 1000,
        layers: tuple[int, ...] = (3, 4, 6, 3),
    ):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 (5 stride-2 stages), got {image_size}")
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, in_ch = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def lenet300(num_classes: int = 10) -> LeNet300:
    """LeNet-300-100 (266,610 params)."""
    return LeNet300(num_classes)


def lenet5(num_classes: int = 10) -> LeNet5:
    """Caffe LeNet-5 (431,080 params)."""
    return LeNet5(num_classes)


def resnet50ish(image_size: int = 224, in_channels: int = 3, num_classes: int = 1000) -> ResNet50ish:
    """ResNet-50-sized CNN taking (N, in_channels, image_size, image_size)."""
    return ResNet50ish(image_size=image_size, in_channels=in_channels, num_classes=num_classes)


MODELS = {"lenet300": lenet300, "lenet5": lenet5, "resnet50ish": resnet50ish}
