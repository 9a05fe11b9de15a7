"""ONNX export with a parity check, and inference backends by name (``torch-fp32``, ``torch-bf16``,
``onnxruntime``) used by the service and ``cxrlab predict``.

>>> fast = create_backend("onnxruntime", model, sample=torch.rand(1, 1, 224, 224), onnx_path=run / "model.onnx")
>>> reports = export_run(run)        # writes run/model.onnx (+ export.json), raises ParityError above tolerance
"""

from cxrlab.export.backends import (
    BACKENDS,
    apply_backend,
    available_backends,
    bf16_supported,
    create_backend,
    list_backends,
)
from cxrlab.export.onnx import ParityError, ParityReport, check_parity, export_module

__all__ = [
    "BACKENDS", "ParityError", "ParityReport", "apply_backend", "available_backends", "bf16_supported",
    "check_parity", "create_backend", "export_module", "export_run", "list_backends",
]


def __getattr__(name: str):
    # export_run needs the serve stages (which know how each kind of run directory loads); imported lazily so
    # that cxrlab.export stays importable by lower layers without pulling in the service.
    if name == "export_run":
        from cxrlab.export.runs import export_run

        return export_run
    raise AttributeError(name)
