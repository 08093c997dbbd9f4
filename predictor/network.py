"""A small 3D U-Net (Conv-BN-ReLU blocks, max-pool down, transposed-conv up, skip concatenation).

Input ``(N, C, D, H, W)`` (C = 1 intensity channel, plus 3 coordinate channels if ``coords``)
with D, H, W multiples of ``2 ** (levels - 1)``; output ``(N, classes, D, H, W)``
logits. BatchNorm (not InstanceNorm): training sees patches and inference whole ROIs, and BatchNorm's
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
        self.head = nn.Conv3d(widths[0], config.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
