"""Inference engines for the two stages: each stage's network on a :mod:`cxrlab.export` backend.

The pipeline keeps the caller's segmenters untouched and runs private copies whose network is swapped for the
chosen backend (``torch-fp32``, ``torch-bf16``, ``onnxruntime``; ``auto``: bf16 where the CPU has native bf16,
else fp32). The PyTorch backends run channels-last: oneDNN's convolutions on this CPU run these
EfficientNet-Lite U-Nets about 1.7× faster in NHWC than in NCHW (``bench/severity.py speed``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cxrlab.anatomy.predict import LungSegmenter
from cxrlab.errors import ConfigError
from cxrlab.export.backends import Agreement, bf16_supported, create_backend, list_backends, mask_agreement
from cxrlab.export.onnx import fresh_onnx

AUTO = "auto"
# the precision names of cxrlab.anatomy (LungSegmenter) → the export backend that computes the same arithmetic
PRECISION_BACKENDS = {"auto": AUTO, "bf16": "torch-bf16", "fp32": "torch-fp32"}


def resolve_backend(backend: str) -> str:
    """``auto`` → ``torch-bf16`` on CPUs with native bf16, else ``torch-fp32``; other names are checked."""
    if backend == AUTO:
        return "torch-bf16" if bf16_supported() else "torch-fp32"
    if backend not in list_backends():
        raise ConfigError(f"unknown inference backend {backend!r}; known: {AUTO}, {', '.join(list_backends())}")
    return backend


class ChannelsLast(nn.Module):
    """Runs ``module`` with NHWC weights and inputs (same results up to float rounding)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))


def segmenter_agreement(segmenter: LungSegmenter) -> Agreement:
    """How ``fastest`` judges an engine for ``segmenter``: its masks on the channels the segmenter returns must
    agree with PyTorch fp32's (``mask_agreement`` at the segmenter's own threshold). Where the sample shows an
    empty mask, the int8 engine is judged by the agreement ``cxrlab export --int8`` measured on real images."""
    seen = [segmenter.config.channels.index(c) for c in segmenter.needed_channels()]
    return mask_agreement(segmenter.config.threshold, channels=seen, evidence=int8_evidence(segmenter))


def int8_evidence(segmenter: LungSegmenter) -> dict[str, float]:
    """``{"openvino-int8": pooled mask Dice}`` (the worst channel) from the run's int8 record, when the int8
    graph is the one made from the run's current ONNX file and the record has the check on real images."""
    import json

    from cxrlab.export.quantize import fresh_int8, int8_paths

    onnx_path = fresh_onnx(segmenter.run_dir) if segmenter.run_dir is not None else None
    if fresh_int8(onnx_path) is None:
        return {}
    try:
        pooled = json.loads(int8_paths(onnx_path)[2].read_text())["agreement_with_fp32"]["pooled"]
        return {"openvino-int8": float(min(pooled))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def stage_segmenter(segmenter: LungSegmenter, backend: str) -> LungSegmenter:
    """A copy of ``segmenter`` whose network runs on ``backend`` (resolved); its pre- and post-processing, input
    size (the one it was trained at) and threshold are the segmenter's own."""
    sample = segmenter.example_input()  # a phantom film: engines are judged by the masks they draw on a chest
    module = copy.deepcopy(segmenter.model).eval()  # the caller's model stays as it was (NCHW, its own precision)
    if backend.startswith("torch-"):
        module = ChannelsLast(module)
    # the run's own exported graph when it is fresh (and beside it the calibrated int8 graph, if any)
    onnx_path = fresh_onnx(segmenter.run_dir) if segmenter.run_dir is not None else None
    engine = create_backend(backend, module, sample=sample, onnx_path=onnx_path,
                            agree=segmenter_agreement(segmenter))
    # precision "fp32": the backend decides the arithmetic, not the segmenter's own autocast; the channels it was
    # trained on and its lung output (the run's default convention) stay the segmenter's
    return LungSegmenter(engine, segmenter.config, precision="fp32", run_dir=segmenter.run_dir,
                         supervised_targets=segmenter.supervised_targets, convention=segmenter.convention)
