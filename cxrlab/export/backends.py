"""Inference backends by name: ``torch-fp32``, ``torch-bf16``, ``onnxruntime``, ``openvino`` (fp32),
``openvino-bf16`` (CPUs with native bf16), ``openvino-int8`` (a run's calibrated int8 graph, written by
``cxrlab export RUN --int8``; :mod:`cxrlab.export.quantize`) and ``fastest`` (times the others on the model and keeps the fastest
whose outputs agree with PyTorch fp32).

A backend turns a trained ``torch.nn.Module`` into a module with the same call signature whose forward runs on
the chosen engine. Because the result is still an ``nn.Module``, any library object that calls ``self.model(x)``
(a lung segmenter, a classifier) can be switched to another engine by swapping that one attribute
(:func:`apply_backend`), with no change to its pre- and post-processing.

Gradients (Grad-CAM) need the PyTorch fp32 graph, so callers keep the original module for explanations.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.registry import Registry

#: name -> factory(module, *, sample, onnx_path=None) -> nn.Module running on that engine
BACKENDS: Registry[Callable[..., nn.Module]] = Registry("inference backend")


def list_backends() -> list[str]:
    return BACKENDS.list()


def available_backends() -> list[str]:
    """Backends usable on this machine (``torch-bf16`` needs a CPU with bf16 autocast support)."""
    return [name for name in BACKENDS.list() if BACKENDS.meta(name)["available"]()]


def create_backend(name: str, module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None,
                   agree: Agreement | None = None) -> nn.Module:
    """Wrap ``module`` (eval mode) for engine ``name``. ``sample``: one example input (shape/dtype for export).
    ``agree``: for ``fastest``, how an engine's outputs must match PyTorch fp32's to be chosen (default: every
    output within ``FASTEST_TOLERANCE``; segmenters pass :func:`mask_agreement`)."""
    factory = BACKENDS.get(name)
    if not BACKENDS.meta(name)["available"]():
        raise ConfigError(f"inference backend {name!r} is not available on this machine; use one of {available_backends()}")
    options = {"agree": agree} if agree is not None and name == "fastest" else {}
    return factory(module.eval(), sample=sample, onnx_path=onnx_path, **options)


def apply_backend(owner: Any, attr: str, name: str, *, sample: torch.Tensor,
                  onnx_path: str | Path | None = None, agree: Agreement | None = None
                  ) -> tuple[nn.Module, nn.Module]:
    """Replace ``owner.<attr>`` (a module) by its ``name`` backend.

    Returns ``(original, wrapped)``: the original fp32 module (for Grad-CAM, FLOP counts) and the wrapper,
    whose ``seconds`` attribute accumulates the time spent in the network (stage timings).
    """
    original = getattr(owner, attr)
    wrapped = create_backend(name, original, sample=sample, onnx_path=onnx_path, agree=agree)
    setattr(owner, attr, wrapped)
    return original, wrapped


class _Wrapped(nn.Module):
    """Common base: keeps the original module reachable, names the engine, times every forward call."""

    engine = "torch-fp32"

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        # Library code may read attributes of the model it owns (e.g. ``model.num_classes``): forward them.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


class TorchFP32(_Wrapped):
    engine = "torch-fp32"

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x)


class TorchBF16(_Wrapped):
    """CPU autocast to bfloat16 (matmul/conv in bf16, reductions in fp32); outputs cast back to float32."""

    engine = "torch-bf16"

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.inner(x)
        return _map_tensors(out, lambda t: t.float())


class OnnxRuntimeModule(_Wrapped):
    """Runs an exported ONNX graph in onnxruntime; inputs/outputs stay torch tensors for the caller."""

    engine = "onnxruntime"

    def __init__(self, module: nn.Module, onnx_path: Path, sample: torch.Tensor):
        super().__init__(module)
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        options = ort.SessionOptions()
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # the same choice for onnxruntime's own thread pool: no busy-waiting on a shared CPU
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        # ONNX flattens dict/tuple outputs; remember the PyTorch structure to hand the caller the same shape.
        with torch.no_grad():
            template = module.eval()(sample)
        self.keys = list(template) if isinstance(template, dict) else None
        self.single = isinstance(template, torch.Tensor)

    def forward(self, x: torch.Tensor) -> Any:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        tensors = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        if self.keys is not None:
            return dict(zip(self.keys, tensors))
        return tensors[0] if self.single else tuple(tensors)


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, never released. Each Core loads the CPU plugin, which installs its own
    alternate signal stack on the loading thread and, when that Core's last model is freed, restores the stack it
    found. Cores freed out of creation order therefore leave the thread on a freed stack, and the next Python
    signal handler run there (e.g. torch's SIGCHLD handler when a subprocess exits) dies with SIGSEGV."""
    import openvino as ov

    return ov.Core()


class OpenVinoModule(_Wrapped):
    """Runs the exported ONNX graph compiled by OpenVINO's CPU plugin (oneDNN kernels; AVX-512 / AMX bf16 when the
    precision is ``bf16``). Outputs come back in the graph's order, re-keyed like the PyTorch module's.

    One image runs on a latency-compiled graph (one stream, every thread). A batch is split across the streams of
    a second, throughput-compiled graph (one thread each, compiled on the first batch), because these small
    networks do not keep two threads busy inside one inference: on this 2-core CPU the EfficientNet-Lite
    classifier and the int8 disease U-Net ran ~20 % more images per second that way (``streams_for_batches``
    turns it off)."""

    streams_for_batches = True

    def __init__(self, module: nn.Module, onnx_path: Path, sample: torch.Tensor, precision: str = "f32",
                 engine: str | None = None):
        super().__init__(module)
        self.onnx_path = Path(onnx_path)  # an ONNX file, or an OpenVINO IR (.xml) such as the int8 graph
        self.engine = engine or ("openvino" if precision == "f32" else f"openvino-{precision}")
        self.precision = precision
        self.threads = max(1, torch.get_num_threads())  # the same thread budget as torch (the service's)
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1}
        # the graph stays in memory: the ONNX file may be a temporary one, gone when the batch graph is compiled
        self.graph = openvino_core().read_model(str(onnx_path))
        self.compiled = openvino_core().compile_model(self.graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._batch_queue: Any = None
        with torch.no_grad():
            template = module.eval()(sample)
        self.keys = list(template) if isinstance(template, dict) else None
        self.single = isinstance(template, torch.Tensor)

    def _queue(self) -> Any:
        """The throughput graph's request queue: one stream (and request) per thread, one thread per stream."""
        if self._batch_queue is None:
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "THROUGHPUT",
                      "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": self.threads}
            compiled = openvino_core().compile_model(self.graph, "CPU", config)
            self._batch_queue = ov.AsyncInferQueue(compiled, self.threads)
        return self._batch_queue

    def _infer_batch(self, feed: np.ndarray) -> list[np.ndarray]:
        queue = self._queue()
        chunks = np.array_split(feed, min(self.threads, len(feed)))
        parts: list[list[np.ndarray] | None] = [None] * len(chunks)

        def done(request: Any, index: int) -> None:  # copies: a request's buffers are reused by its next job
            parts[index] = [np.array(t.data, dtype=np.float32, copy=True) for t in request.output_tensors]

        queue.set_callback(done)
        for i, chunk in enumerate(chunks):
            queue.start_async({0: np.ascontiguousarray(chunk)}, i)
        queue.wait_all()
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def forward(self, x: torch.Tensor) -> Any:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self.streams_for_batches and self.threads > 1 and len(feed) > 1:
            arrays = self._infer_batch(feed)
        else:
            result = self.request.infer({0: feed})
            # copies: the request's output buffers are reused by the next call
            arrays = [np.array(result[o], dtype=np.float32, copy=True) for o in self.compiled.outputs]
        tensors = [torch.from_numpy(a) for a in arrays]
        if self.keys is not None:
            return dict(zip(self.keys, tensors))
        return tensors[0] if self.single else tuple(tensors)


def _map_tensors(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(o, fn) for o in out)
    if isinstance(out, dict):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


def bf16_supported() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX); elsewhere autocast to bf16 is emulated
    and slower than fp32, so the backend is not offered."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _onnx_file(module: nn.Module, sample: torch.Tensor, onnx_path: str | Path | None):
    """``onnx_path`` when it exists (``cxrlab export`` wrote it), else the module exported to a private file (the
    ONNX engines read the whole graph when the session is made, so a temporary file may go away afterwards)."""
    from cxrlab.export.onnx import export_module

    if onnx_path is not None and Path(onnx_path).exists():
        yield Path(onnx_path)
        return
    with contextlib.ExitStack() as stack:
        if onnx_path is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrlab-onnx-")))
            onnx_path = tmp / "model.onnx"
        export_module(module, sample, onnx_path)
        yield Path(onnx_path)


@BACKENDS.register("torch-fp32", available=lambda: True)
def _torch_fp32(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    return TorchFP32(module)


@BACKENDS.register("torch-bf16", available=bf16_supported)
def _torch_bf16(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    return TorchBF16(module)


@BACKENDS.register("onnxruntime", available=_onnxruntime_available)
def _onnxruntime(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    """Use ``onnx_path`` when it exists (``cxrlab export``), else export to a private temporary file first."""
    with _onnx_file(module, sample, onnx_path) as path:
        return OnnxRuntimeModule(module, path, sample)


@BACKENDS.register("openvino", available=_openvino_available)
def _openvino(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    with _onnx_file(module, sample, onnx_path) as path:
        return OpenVinoModule(module, path, sample, precision="f32")


@BACKENDS.register("openvino-bf16", available=lambda: _openvino_available() and bf16_supported())
def _openvino_bf16(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    with _onnx_file(module, sample, onnx_path) as path:
        return OpenVinoModule(module, path, sample, precision="bf16")


def _int8_available() -> bool:
    from cxrlab.export.quantize import int8_supported

    return _openvino_available() and int8_supported()


@BACKENDS.register("openvino-int8", available=_int8_available)
def _openvino_int8(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None) -> nn.Module:
    """The run's calibrated int8 graph beside ``onnx_path`` (``cxrlab export RUN --int8``); the layers NNCF left
    unquantized run in bf16 where the CPU has it. No such graph (or one made from another ONNX file): refused."""
    from cxrlab.export.quantize import INT8_XML, fresh_int8

    xml = fresh_int8(onnx_path)
    if xml is None:
        raise ConfigError(f"no calibrated int8 graph for this model ({INT8_XML} made from the model.onnx beside it; "
                          "`cxrlab export RUN --int8` writes one for segmentation runs)")
    return OpenVinoModule(module, xml, sample, precision="bf16" if bf16_supported() else "f32",
                          engine="openvino-int8")


#: largest |output - PyTorch fp32 output| on the timing sample for ``fastest`` to accept an engine by default
#: (classifier logits: bf16 engines are ~0.5 off and are refused there)
FASTEST_TOLERANCE = 0.05
#: a segmenter's masks on an engine must match PyTorch fp32's masks with at least this Dice (per channel)
MASK_AGREEMENT_DICE = 0.98

#: ``agree(engine_outputs, fp32_outputs, engine_name) -> (accepted, reason)``, outputs flattened to float tensors
Agreement = Callable[[list[torch.Tensor], list[torch.Tensor], str], tuple[bool, str]]
#: engines that compute in fp32: where a sample cannot tell engines apart they are still exact
EXACT_ENGINES = ("torch-fp32", "onnxruntime", "openvino")


def max_abs_agreement(tolerance: float = FASTEST_TOLERANCE) -> Agreement:
    """Every output value within ``tolerance`` of PyTorch fp32's (the default criterion)."""
    def agree(out: list[torch.Tensor], reference: list[torch.Tensor], engine: str = "") -> tuple[bool, str]:
        diff = max(float((a - b).abs().max()) for a, b in zip(out, reference))
        return diff <= tolerance, f"max |diff| {diff:.3g} {'<=' if diff <= tolerance else '>'} {tolerance:g}"
    return agree


def mask_agreement(threshold: float = 0.5, min_dice: float = MASK_AGREEMENT_DICE,
                   channels: Sequence[int] | None = None, evidence: dict[str, float] | None = None) -> Agreement:
    """For segmentation logits: what a user sees is the mask (sigmoid >= ``threshold``), so an engine is accepted
    when its mask agrees with PyTorch fp32's with Dice >= ``min_dice`` on every output channel the user sees
    (``channels``, default all; pooled over the sample). bf16 engines move logits by ~0.5 but masks only at their
    edges. Where fp32 draws nothing on the sample in a channel the user sees (a disease network on a clear
    film), the sample cannot tell engines apart: the fp32 engines (``EXACT_ENGINES``) are accepted, a
    reduced-precision one only on ``evidence`` (engine -> mask Dice vs fp32 measured on real images, e.g. at int8
    calibration) of at least ``min_dice``."""
    def agree(out: list[torch.Tensor], reference: list[torch.Tensor], engine: str = "") -> tuple[bool, str]:
        worst = 1.0
        for a, b in zip(out, reference):
            if a.ndim != 4:
                continue
            if channels is not None:
                a, b = a[:, list(channels)], b[:, list(channels)]
            if bool((torch.sigmoid(b) < threshold).all(dim=(0, 2, 3)).any()):
                return _unjudged(engine, evidence or {}, min_dice)
            ma, mb = torch.sigmoid(a) >= threshold, torch.sigmoid(b) >= threshold
            inter = (ma & mb).sum(dim=(0, 2, 3)).float()
            total = (ma.sum(dim=(0, 2, 3)) + mb.sum(dim=(0, 2, 3))).float()
            dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
            worst = min(worst, float(dice.min()))
        return worst >= min_dice, f"mask Dice vs fp32 {worst:.4f} {'>=' if worst >= min_dice else '<'} {min_dice:g}"
    return agree


def _unjudged(engine: str, evidence: dict[str, float], min_dice: float) -> tuple[bool, str]:
    """The verdict where fp32 draws an empty mask on the sample (any engine would "agree")."""
    if engine in EXACT_ENGINES:
        return True, "fp32 arithmetic (the sample shows an empty mask: nothing to compare)"
    seen = evidence.get(engine)
    if seen is None:
        return False, ("the sample shows an empty mask, so a reduced-precision engine cannot be judged on it, and "
                       "no real-image agreement is recorded for it")
    ok = seen >= min_dice
    return ok, (f"the sample shows an empty mask; mask Dice vs fp32 on real images (recorded at export) {seen:.4f} "
                f"{'>=' if ok else '<'} {min_dice:g}")


def choose_fastest(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None,
                   candidates: list[str] | None = None, repeats: int = 5,
                   tolerance: float = FASTEST_TOLERANCE, agree: Agreement | None = None
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Time every available engine on ``sample`` (median of ``repeats`` calls after a warm-up) and return the
    fastest whose outputs agree with PyTorch fp32 (``agree``; default: within ``tolerance``), with the
    timings, the reason each engine was accepted or refused, and the refusals."""
    agree = agree or max_abs_agreement(tolerance)
    names = candidates or [n for n in available_backends() if n != "fastest"]
    with torch.no_grad():
        reference = _flat(module.eval()(sample))
    with _onnx_file(module, sample, onnx_path) as path, torch.no_grad():
        timings: dict[str, float] = {}
        rejected: dict[str, str] = {}
        accepted: dict[str, str] = {}
        engines: dict[str, nn.Module] = {}
        for name in names:
            try:
                engine = BACKENDS.get(name)(module, sample=sample, onnx_path=path)
            except ConfigError as exc:  # e.g. openvino-int8 without a calibrated graph
                rejected[name] = str(exc)
                continue
            ok, why = agree(_flat(engine(sample)), reference, name)
            if not ok:
                rejected[name] = why
                continue
            accepted[name] = why
            seconds = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                engine(sample)
                seconds.append(time.perf_counter() - t0)
            timings[name] = float(np.median(seconds)) * 1000
            engines[name] = engine
    best = min(timings, key=timings.get)
    chosen = engines[best]
    chosen.seconds = 0.0
    return chosen, {"chosen": best, "median_ms": {k: round(v, 3) for k, v in timings.items()}, "rejected": rejected,
                    "accepted": accepted}


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.float()]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat(v)]
    return []


@BACKENDS.register("fastest", available=lambda: True)
def _fastest(module: nn.Module, *, sample: torch.Tensor, onnx_path: str | Path | None = None,
             agree: Agreement | None = None) -> nn.Module:
    """The fastest engine for this model on this machine, chosen when the model is loaded (``choose_fastest``);
    the wrapper's ``choice`` says which and why."""
    engine, choice = choose_fastest(module, sample=sample, onnx_path=onnx_path, agree=agree)
    engine.choice = choice
    return engine
