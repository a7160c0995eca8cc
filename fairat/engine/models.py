"""Model registry: small CNN (CPU default), PreAct ResNet-18 and WideResNet, all in pixel space.

Every model takes inputs in [0, 1] and owns its normalization (RobustBench's convention), so attack
code never normalizes and eps is always in pixel units.

Shapes: input (N, C, H, W) float in [0, 1]; output (N, num_classes) logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a buffer-holding layer, so it travels with the state dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PixelSpaceModel(nn.Module):
    """Wraps a network with its input normalization; forward expects [0, 1] pixels."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def attack_view(self) -> nn.Module:
        """An eval-mode equivalent of this model for crafting attacks, cheaper where possible.

        Attacks need input gradients only, with BatchNorm in eval mode; an architecture whose
        ``net`` offers ``attack_view()`` returns a copy with BatchNorm folded into the convolutions
        (same outputs, fewer passes over memory). Build a fresh view after every optimizer step:
        it holds detached copies of the current weights. Others return the model itself.
        """
        view = getattr(self.net, "attack_view", None)
        if view is None:
            return self
        return nn.Sequential(self.normalize, view()).eval()


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``, computed as three elementwise maxima where no gradient is needed.

    Why: on CPU, torch's max_pool2d spends 4-8x longer than the arithmetic needs on the small
    feature maps of this project (8 ms of a 20 ms forward of 300 digits images on one core), and a
    gradient-free forward is what Square (5,000 queries per image) and every prediction run. The
    maximum of four strided slices is the same number exactly (a maximum has no rounding), so every
    output and verdict is unchanged. Where a gradient flows, torch's own op runs: its backward sends
    a tie's gradient to the first maximum, which this project's attacks must keep reproducing.
    Shapes: (N, C, H, W) -> (N, C, H // 2, W // 2), odd edges dropped as max_pool2d drops them.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
    return torch.maximum(rows, torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` with :func:`max_pool_2x2`'s gradient-free fast path (no parameters:
    state dicts and checkpoints are those of ``nn.MaxPool2d``)."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Six 3x3 conv layers in three stages (w, 2w, 4w channels), global pooling, one linear layer.

    Sized to train usefully on 2 CPU cores: at width 32 about 0.3 M parameters.
    Pooling happens only while the feature map is larger than 2x2, so 8x8 digits and 32x32 CIFAR
    images both work.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for mult in (1, 2, 4):
            layers += _conv_bn(c, width * mult) + _conv_bn(width * mult, width * mult)
            c = width * mult
            if size > 2:
                layers.append(MaxPool2x2())
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    @torch.no_grad()
    def attack_view(self) -> nn.Module:
        """Eval-mode copy with each conv+BatchNorm folded into one biased conv (see PixelSpaceModel)."""
        return _FoldedCNN(self)


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equal to conv followed by eval-mode BatchNorm."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return (conv.weight * scale[:, None, None, None]).detach(), bias.detach()


class _FoldedCNN(nn.Module):
    """SmallCNN with BatchNorm folded away; only for eval-mode use (attacks)."""

    def __init__(self, cnn: SmallCNN) -> None:
        super().__init__()
        self.ops: list[Callable[[torch.Tensor], torch.Tensor]] = []
        mods = list(cnn.features)
        for i, mod in enumerate(mods):
            if isinstance(mod, nn.Conv2d):
                bn = mods[i + 1]
                # _BatchNorm also covers SyncBatchNorm (data-parallel training on GPUs).
                assert isinstance(bn, nn.modules.batchnorm._BatchNorm), "conv must precede BN"
                weight, bias = _fold_conv_bn(mod, bn)
                self.ops.append(partial(F.conv2d, weight=weight, bias=bias, padding=1))
            elif isinstance(mod, nn.ReLU):
                self.ops.append(F.relu)
            elif isinstance(mod, nn.MaxPool2d):
                self.ops.append(max_pool_2x2)
        self.head_weight = cnn.head.weight.detach()
        self.head_bias = cnn.head.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), self.head_weight,
                        self.head_bias)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al., 2016): PreAct ResNet's block and, with wider
    channels, WideResNet's (Zagoruyko & Komodakis, 2016), as used by Rice et al. for AT."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """PreAct ResNet-18; ``width`` is the first stage's channels (64 in the paper, 16 for CPU)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 1 if i == 0 else 2
            stages += [PreActBlock(c, width * mult, stride), PreActBlock(width * mult, width * mult, 1)]
            c = width * mult
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class WideResNet(nn.Module):
    """WRN-depth-widen: (depth - 4) / 6 blocks per stage, channels 16, 16k, 32k, 64k."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"model.depth: {depth} must be 6n + 4 for a WideResNet (e.g. 28, 34)")
        n = (depth - 4) // 6
        channels = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        blocks, c = [], channels[0]
        for stage, c_out in enumerate(channels[1:]):
            for i in range(n):
                blocks.append(PreActBlock(c, c_out, (1 if stage == 0 else 2) if i == 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs to know about the data."""

    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


Builder = Callable[[ModelSpec, "int | None", "int | None"], nn.Module]

MODELS: dict[str, Builder] = {
    "small_cnn": lambda s, width, depth: SmallCNN(s.in_channels, s.num_classes, s.image_size,
                                                  width or 32),
    "preact_resnet18": lambda s, width, depth: PreActResNet18(s.in_channels, s.num_classes,
                                                              width or 64),
    "wrn": lambda s, width, depth: WideResNet(s.in_channels, s.num_classes, depth or 28, width or 10),
}


def build_model(name: str, spec: ModelSpec, width: int | None = None,
                depth: int | None = None) -> PixelSpaceModel:
    """Build a registered architecture wrapped with its input normalization.

    Args:
        name: a key of :data:`MODELS`.
        spec: channels, classes, image size and per-channel mean/std of the training data.
        width: base width (small_cnn, preact_resnet18) or widen factor (wrn); None = default.
        depth: WRN depth; None = 28.
    """
    if name not in MODELS:
        raise ValueError(f"model.name: {name!r} is not one of {sorted(MODELS)}")
    return PixelSpaceModel(MODELS[name](spec, width, depth), spec.mean, spec.std)
