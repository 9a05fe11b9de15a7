"""The network being pretrained: a registry backbone plus the objectives' heads (dropped after pretraining).

``PretrainNet(x)`` takes [0, 1] input (B, 1, H, W), normalises it with the backbone's contract, and returns the
pooled features, the stride-8 feature map (for the light segmentation head) and each head's output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cxrlab.models.backbones import Backbone, get_backbone_entry
from cxrlab.pretrain.config import PretrainConfig

SEG_STRIDE = 8


class PretrainNet(nn.Module):
    def __init__(self, cfg: PretrainConfig, heads: dict[str, list[str]], views: list[str], masks: list[str]):
        super().__init__()
        entry = get_backbone_entry(cfg.backbone)
        self.backbone, self.load_report = entry.create(in_chans=1, weights=cfg.weights)
        mean, std = entry.normalization(1, cfg.weights)
        self.contract = entry.contract(1, cfg.weights, cfg.size)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        nf = self.backbone.num_features
        sup = cfg.objectives.supervised
        # Which stage ends at stride 8: probed once on a dummy input.
        with torch.no_grad():
            x = torch.zeros(1, 1, cfg.size, cfg.size)
            self.seg_stage, seg_ch = None, None
            for i, stage in enumerate(self.backbone.stages()):
                x = stage(x)
                if x.shape[-1] * SEG_STRIDE >= cfg.size:
                    self.seg_stage, seg_ch = i, x.shape[1]
        self.diag_heads = nn.ModuleList([nn.Linear(nf, len(c)) for c in heads.values()]) if sup.enabled else \
            nn.ModuleList()
        self.view_head = nn.Linear(nf, len(views)) if sup.enabled and views and sup.view_weight > 0 else None
        self.seg_head = (nn.Sequential(nn.Conv2d(seg_ch, 32, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(32, len(masks), 1))
                         if sup.enabled and masks and sup.mask_weight > 0 else None)
        self.projection = None
        if cfg.objectives.ssl.enabled:
            from lightly.models.modules import SimCLRProjectionHead

            s = cfg.objectives.ssl
            self.projection = SimCLRProjectionHead(nf, s.hidden_dim, s.projection_dim)

    def features(self, x: Tensor, want_map: bool = False) -> tuple[Tensor, Tensor | None]:
        x = (x - self.mean) / self.std
        fmap = None
        for i, stage in enumerate(self.backbone.stages()):
            x = stage(x)
            if want_map and i == self.seg_stage:
                fmap = x
        return self.backbone.pool(x), fmap

    def supervised(self, x: Tensor) -> dict[str, object]:
        pooled, fmap = self.features(x, want_map=self.seg_head is not None)
        return {"diag": [h(pooled) for h in self.diag_heads],
                "view": self.view_head(pooled) if self.view_head is not None else None,
                "seg": self.seg_head(fmap) if self.seg_head is not None else None}

    def project(self, x: Tensor) -> Tensor:
        return self.projection(self.features(x)[0])

    def backbone_state(self) -> dict[str, Tensor]:
        """The backbone network's own weights (``Backbone.net`` key names: a ``run:`` weight source)."""
        return {k: v.detach().clone().contiguous() for k, v in self.backbone.net.state_dict().items()}
