"""The small custom CNN of Pasa et al. (Sci Rep 2019, "Efficient deep network architectures for fast chest
X-ray tuberculosis screening and visualization"), the from-scratch model of the COVID classification project.

Five (optionally six) blocks of two 3x3 conv-BN-ReLU layers with a 1x1 residual shortcut, each followed by
2x2 max pooling; widths 16-32-48-64-80(-96); global average pooling. About 0.2 M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn


class PasaBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.pool(self.act(y + self.shortcut(x)))


class PasaNet(nn.Module):
    """Feature extractor (no classifier); ``num_features`` is the last block's width."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 48, 64, 80)):
        super().__init__()
        chans = [in_chans, *widths]
        self.blocks = nn.Sequential(*[PasaBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)
