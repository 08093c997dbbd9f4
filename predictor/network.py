"""A small 3D U-Net (Conv-BN-ReLU blocks, max-pool down, transposed-conv up, skip concatenation).

Input ``(N, C, D, H, W)`` (C = 1 intensity channel, plus 3 coordinate channels if ``coords``)
with D, H, W multiples of ``2 ** (levels - 1)``; output ``(N, classes, D*fz, H*fy, W*fx)`` logits, where
``upsample = (fz, fy, fx)`` (default 1, 1, 1) lets the last 1x1 convolution predict ``fz*fy*fx`` sub-voxels per
input voxel (a "pixel shuffle" head): labels on a finer grid than the input, at the cost of one wider 1x1
convolution. BatchNorm (not InstanceNorm): training sees patches and inference whole ROIs, and BatchNorm's
running statistics do not depend on the input's extent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Width ``base`` channels at full resolution, doubled per level; ``levels`` resolutions.

    ``coords``: 3 extra input channels hold each voxel's position in the volume (canonical axes, -1..1),
    so organs that look alike (left/right kidney, adrenals) are told apart by where they are in the ROI.
    """

    classes: int
    base: int = 16
    levels: int = 4
    coords: bool = False
    upsample: tuple[int, int, int] = (1, 1, 1)  # output sub-voxels per input voxel along (D, H, W)

    def __post_init__(self) -> None:
        if len(self.upsample) != 3 or any(f != int(f) or f < 1 for f in self.upsample):
            raise ValueError(f"upsample must be three integers >= 1, got {self.upsample}")
        object.__setattr__(self, "upsample", tuple(int(f) for f in self.upsample))  # config.json gives a list

    @property
    def sub_voxels(self) -> int:
        fz, fy, fx = self.upsample
        return fz * fy * fx

    @property
    def in_channels(self) -> int:
        return 4 if self.coords else 1

    @property
    def multiple(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**i for i in range(config.levels)]
        self.down = nn.ModuleList()
        cin = config.in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_low, w in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.ConvTranspose3d(w_low, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
        self.head = nn.Conv3d(widths[0], config.classes * config.sub_voxels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes, D*fz, H*fy, W*fx)``."""
        return depth_to_space(self.forward_blocks(x), self.config.upsample)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Logits before the sub-voxel shuffle, viewed ``(N, classes, fz*fy*fx, D, H, W)`` (no copy):
        ``[:, c, (a*fy + b)*fx + e, d, h, w]`` is class c at output voxel ``(d*fz + a, h*fy + b, w*fx + e)``."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        x = self.head(x)
        return x.view(x.shape[0], self.config.classes, self.config.sub_voxels, *x.shape[2:])


def upsampled_shape(shape: tuple[int, ...], upsample: tuple[int, int, int]) -> tuple[int, int, int]:
    """The output grid's voxel counts for an input grid of ``shape`` (same axis order as ``upsample``)."""
    n0, n1, n2 = (n * f for n, f in zip(shape, upsample, strict=True))
    return n0, n1, n2


def depth_to_space(blocks: torch.Tensor, upsample: tuple[int, int, int]) -> torch.Tensor:
    """``(N, C, fz*fy*fx, D, H, W)`` (as from :meth:`UNet3D.forward_blocks`) -> ``(N, C, D*fz, H*fy, W*fx)``."""
    n, c, _, d, h, w = blocks.shape
    fz, fy, fx = upsample
    if fz * fy * fx == 1:
        return blocks[:, :, 0]
    x = blocks.reshape(n, c, fz, fy, fx, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(n, c, d * fz, h * fy, w * fx)


def space_to_depth(labels: torch.Tensor, upsample: tuple[int, int, int]) -> torch.Tensor:
    """The inverse layout for a target: ``(N, D*fz, H*fy, W*fx)`` -> ``(N, fz*fy*fx, D, H, W)``."""
    n, dz, hy, wx = labels.shape
    fz, fy, fx = upsample
    x = labels.reshape(n, dz // fz, fz, hy // fy, fy, wx // fx, fx).permute(0, 2, 4, 6, 1, 3, 5)
    return x.reshape(n, fz * fy * fx, dz // fz, hy // fy, wx // fx)
