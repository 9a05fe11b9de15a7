"""The arms of the ICU study as data: how each one is trained (fine-tuned recipe or frozen embedding + head),
which backbone it starts from and whether fused (train-only) severity rows are added."""

from __future__ import annotations

from dataclasses import dataclass

from cxrlab.errors import ConfigError


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    kind: str          # "finetune" (the covid-icu recipe per fold) | "head" (frozen embedding + small MLP)
    backbone: str      # "imagenet" | "xray" (the --xray-backbone run / xrv: file)
    fusion: bool

    def weights(self, xray_backbone: str | None) -> str | None:
        """The recipe's ``model.weights`` (or the embedder source) for this arm; None when the X-ray backbone is
        not available."""
        if self.backbone == "imagenet":
            return "imagenet"
        return xray_backbone


ARMS: tuple[Arm, ...] = (
    Arm("a_imagenet", "(a) ImageNet Lite0, primary only (baseline)", "finetune", "imagenet", False),
    Arm("b_imagenet_fusion", "(b) ImageNet Lite0 + fusion", "finetune", "imagenet", True),
    Arm("c_xray", "(c) X-ray-pretrained Lite0", "finetune", "xray", False),
    Arm("d_xray_fusion", "(d) X-ray-pretrained Lite0 + fusion", "finetune", "xray", True),
    Arm("e_head", "(e) frozen ImageNet Lite0 embedding + small MLP", "head", "imagenet", False),
    Arm("e_head_fusion", "(e) frozen ImageNet Lite0 embedding + small MLP + fusion", "head", "imagenet", True),
    Arm("e_head_xray", "(e) frozen X-ray Lite0 embedding + small MLP", "head", "xray", False),
    Arm("e_head_xray_fusion", "(e) frozen X-ray Lite0 embedding + small MLP + fusion", "head", "xray", True),
)
BASELINE = "a_imagenet"


def get_arm(name: str) -> Arm:
    for arm in ARMS:
        if arm.name == name:
            return arm
    raise ConfigError(f"unknown ICU arm {name!r} (known: {', '.join(a.name for a in ARMS)})")
