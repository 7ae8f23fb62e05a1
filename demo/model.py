"""A compact U-Net, 2-D or 1-D. GroupNorm instead of BatchNorm: the statistics of a sample do not
depend on the rest of the batch, so data-parallel training computes the same function."""

import torch
from torch import nn
import torch.nn.functional as F


def _block(conv, cin, cout):
    return nn.Sequential(conv(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         conv(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class UNet(nn.Module):
    def __init__(self, in_channels=3, classes=4, width=16, depth=3, dims=2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool1d(2)
        self.mode = "bilinear" if dims == 2 else "linear"
        chans = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        c = in_channels
        for ch in chans:
            self.down.append(_block(conv, c, ch))
            c = ch
        self.mid = _block(conv, c, c * 2)
        c = c * 2
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(_block(conv, c + ch, ch))
            c = ch
        self.head = conv(c, classes, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.mid(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
