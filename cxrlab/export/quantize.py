"""Post-training int8 quantization (NNCF) of an exported ONNX graph, for OpenVINO's CPU plugin.

int8 needs activation ranges, so it needs calibration inputs, and they must look like what the model will see:
calibrated on one phantom film, the disease model's masks on real films agreed with fp32's at Dice 0.93 (pooled);
on 16 of its training images, 0.98 (``bench/int8_calibration.py``). So the int8 graph is made once, by
``cxrlab export RUN --int8`` (calibrated on the run's own *training* images, never its val/test ones), and lands
next to ``model.onnx`` as ``model.int8.xml``/``.bin`` with ``int8.json`` (what it was made from, and its mask
agreement with fp32 on other training images). The ``openvino-int8`` backend reads it only while ``int8.json``
still names the ONNX graph beside it (same SHA-256): a re-exported model never runs on a stale int8 graph.

>>> xml = quantize_int8(run / "model.onnx", calibration_inputs)   # N×C×H×W float32, prepared as for the model
>>> fresh_int8(run / "model.onnx")                                # the xml, or None
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_json, file_sha256

INT8_XML = "model.int8.xml"
INT8_INFO = "int8.json"
#: NNCF's "performance" preset: symmetric int8 weights and activations (fastest on VNNI); ``mixed`` keeps
#: asymmetric activations, a little slower and sometimes more accurate
PRESETS = ("performance", "mixed")


def int8_supported() -> bool:
    """True on CPUs with int8 dot products (AVX512-VNNI, AVX-VNNI or AMX); elsewhere int8 is not faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def int8_paths(onnx_path: str | Path) -> tuple[Path, Path, Path]:
    """``(xml, bin, info)`` beside ``onnx_path``."""
    xml = Path(onnx_path).with_name(INT8_XML)
    return xml, xml.with_suffix(".bin"), xml.with_name(INT8_INFO)


def quantize_int8(onnx_path: str | Path, calibration: np.ndarray, *, preset: str = "performance",
                  info: dict[str, Any] | None = None) -> Path:
    """Quantize ``onnx_path`` with NNCF on ``calibration`` (N×C×H×W float32 network inputs) and write
    ``model.int8.xml``/``.bin`` next to it, then ``int8.json`` (``info`` merged in). Returns the xml path."""
    if not nncf_available():
        raise ConfigError("int8 quantization needs NNCF: pip install 'nncf>=3.4'")
    if preset not in PRESETS:
        raise ConfigError(f"int8 preset {preset!r}: choose one of {', '.join(PRESETS)}")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"calibration inputs must be a non-empty N×C×H×W array, got shape {calibration.shape}")
    import logging

    # NNCF imports torch's C++-extension helper, which logs a CUDA warning on CPU-only machines: noise here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf
    import openvino as ov

    from cxrlab.export.backends import openvino_core

    onnx_path = Path(onnx_path)
    model = openvino_core().read_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration), lambda x: x[None]),
                              preset=nncf.QuantizationPreset(preset), subset_size=len(calibration))
    xml, binary, info_path = int8_paths(onnx_path)
    info_path.unlink(missing_ok=True)  # until the new pair is in place, no int8 graph counts as fresh
    tmp = Path(tempfile.mkdtemp(prefix=".int8-", dir=onnx_path.parent))
    try:
        ov.save_model(quantized, str(tmp / INT8_XML), compress_to_fp16=False)
        os.replace(tmp / binary.name, binary)
        os.replace(tmp / INT8_XML, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {"onnx": onnx_path.name, "onnx_sha256": file_sha256(onnx_path), "xml_sha256": file_sha256(xml),
              "bin_sha256": file_sha256(binary), "preset": preset, "calibration_inputs": len(calibration),
              "input_shape": list(calibration.shape[1:]), "nncf": nncf.__version__, "openvino": ov.__version__}
    atomic_write_json(info_path, record | (info or {}))
    return xml


def fresh_int8(onnx_path: str | Path | None) -> Path | None:
    """The int8 graph made from the ONNX file now at ``onnx_path`` (checked by SHA-256), else None."""
    if onnx_path is None or not Path(onnx_path).is_file():
        return None
    xml, binary, info_path = int8_paths(onnx_path)
    if not (xml.is_file() and binary.is_file() and info_path.is_file()):
        return None
    import json

    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    if info.get("onnx_sha256") != file_sha256(onnx_path) or info.get("xml_sha256") != file_sha256(xml) \
            or info.get("bin_sha256") != file_sha256(binary):
        return None
    return xml
