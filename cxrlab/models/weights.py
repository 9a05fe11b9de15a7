"""Weight sources, offline by design: ``none``, ``imagenet``, ``xrv:<name>``, ``file:<path>``, ``run:<pretrain run>``.

Nothing here downloads. A missing file raises ``WeightsNotFoundError`` naming where it was looked for and how
to obtain it. Foreign checkpoints are matched onto the backbone's own key names (exact, then by suffix, then by
order and shape) and every tensor that did not load is reported, never silently left random.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from cxrlab.errors import ConfigError, InputError, WeightsNotFoundError

# Offline is the normal case: libraries that would otherwise try the network must fail fast instead of hanging.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

# TorchXRayVision stores its weights as <cache>/<basename of the release URL>.
XRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
XRV_WEIGHTS = {
    "densenet121-res224-all": "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-nih": "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-pc": "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-chex": "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-rsna": "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-mimic_nb": "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-mimic_ch": "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "resnet50-res512-all": "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
}
# TorchXRayVision models take one channel scaled to [-1024, 1024]; as mean/std on [0, 1] input:
XRV_NORMALIZATION = ((0.5,), (1.0 / 2048,))

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")


@dataclass
class LoadReport:
    """What a weight source put into a model: loaded keys, renamed keys, adapted ones, and what did not load."""

    source: str
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # model key -> checkpoint key
    adapted: list[str] = field(default_factory=list)  # first conv re-shaped for the input channel count
    missing: list[str] = field(default_factory=list)  # model keys left at their initial value
    unused: list[str] = field(default_factory=list)  # checkpoint keys that matched nothing

    def summary(self) -> str:
        return (f"{self.source}: loaded {len(self.loaded)} tensors ({len(self.renamed)} renamed, "
                f"{len(self.adapted)} channel-adapted); not loaded: {len(self.missing)}; unused: {len(self.unused)}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": len(self.loaded), "renamed": self.renamed, "adapted": self.adapted,
                "missing": self.missing, "unused": self.unused}


@dataclass
class WeightSource:
    """A parsed ``weights`` value: ``kind`` in none/imagenet/xrv/file, ``arg`` the name or path."""

    kind: str
    arg: str = ""

    @classmethod
    def parse(cls, value: str | None) -> "WeightSource":
        value = (value or "none").strip()
        if value in ("none", "imagenet"):
            return cls(value)
        for kind in ("xrv", "file", "run"):
            if value.startswith(kind + ":") and value[len(kind) + 1:]:
                return cls(kind, value[len(kind) + 1:])
        raise ConfigError(f"weights {value!r}: expected none, imagenet, xrv:<name>, file:<path> or run:<pretrain run>")

    def __str__(self) -> str:
        return self.kind if not self.arg else f"{self.kind}:{self.arg}"


def read_run_backbone(run: str | os.PathLike) -> dict[str, Any]:
    """A ``cxrlab pretrain`` run's finished backbone: ``{"backbone", "state_dict", "contract"}``."""
    path = Path(run) / "backbone.pt"
    if not path.is_file():
        raise WeightsNotFoundError(f"weights run:{run}: no {path} (not a pretraining run, or not finished: "
                                   f"`cxrlab pretrain ... --out {run} --resume` completes it)")
    return load_checkpoint(path, required=("backbone", "state_dict", "contract"))


def xrv_cache_dir() -> Path:
    """TorchXRayVision's weight folder (``$XRV_CACHE_DIR`` or ``~/.torchxrayvision/models_data``)."""
    return Path(os.environ.get("XRV_CACHE_DIR", Path.home() / ".torchxrayvision" / "models_data"))


def xrv_weight_path(name: str) -> Path:
    if name not in XRV_WEIGHTS:
        raise ConfigError(f"weights xrv:{name}: unknown TorchXRayVision weight; known: {', '.join(sorted(XRV_WEIGHTS))}")
    path = xrv_cache_dir() / XRV_WEIGHTS[name]
    if not path.is_file():
        raise WeightsNotFoundError(
            f"TorchXRayVision weight {name!r} not found at {path}; obtain it on a machine with internet "
            f"(python -c \"import torchxrayvision as xrv; xrv.models.get_model('{name}')\", or download "
            f"{XRV_RELEASE}{XRV_WEIGHTS[name]}) and copy it there (or set XRV_CACHE_DIR)")
    return path


def torch_hub_file(url: str, what: str) -> Path:
    """The local copy of a torchvision/timm release file in torch's hub cache, or a clear error."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{what} not found at {path}; cxrlab never downloads: fetch {url} on a machine with internet and "
            f"copy it there (or use weights: none / file:<path>)")
    return path


def hf_cached_file(repo_id: str, what: str, also_looked: list[Path] = ()) -> Path:
    """A file of a Hugging Face Hub repo from the local HF cache only (``HF_HUB_OFFLINE`` is set)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    looked = ", ".join([f"HF cache {repo_id}"] + [str(p) for p in also_looked])
    raise WeightsNotFoundError(
        f"{what} not found (looked in: {looked}); cxrlab never downloads: run `huggingface-cli download {repo_id}` "
        f"on a machine with internet and copy ~/.cache/huggingface over (or use weights: none / file:<path>)")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pt/.pth/.bin/.safetensors), unwrapped from the usual containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Some published checkpoints (TorchXRayVision's) pickle a whole nn.Module: only this trusted path unpickles.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            raise WeightsNotFoundError(
                f"{path} pickles objects of module {exc.name!r}; install it (pip install {exc.name}) to read it"
            ) from exc
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        for key in _CONTAINER_KEYS:
            if key in obj:
                return _unwrap(obj[key], path)
    raise WeightsNotFoundError(f"{path}: no state dict found (looked for a tensor mapping or keys {_CONTAINER_KEYS})")


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Pretrained first-layer filters for another input channel count (1 = grey, 2 = image + mask, 3 = RGB).

    Sums RGB filters for one channel and tiles/rescales otherwise (timm's rule), so that a grey image repeated on
    every channel gives the same activation as before.
    """
    source_chans = weight.shape[1]
    if source_chans == in_chans:
        return weight
    if source_chans == 3:
        from timm.models import adapt_input_conv

        return adapt_input_conv(in_chans, weight)
    repeat = -(-in_chans // source_chans)
    tiled = weight.repeat(1, repeat, 1, 1)[:, :in_chans]
    return tiled * (source_chans / in_chans)


def match_state_dict(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                     first_conv: str | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map checkpoint tensors onto a model's key names.

    Order of attempts: same name; same name after a prefix (``module.``, ``model.``, ``backbone.``...: the model
    key is a dotted suffix of exactly one checkpoint key); then, for what is left, the two key lists in order,
    pairing equal shapes (a checkpoint of the same architecture whose layers were renamed). The first conv may
    differ in its input-channel dimension and is adapted.
    """
    report = LoadReport(source="")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    first_key = f"{first_conv}.weight" if first_conv else None

    def fits(tkey: str, tensor: torch.Tensor) -> torch.Tensor | None:
        want = target[tkey]
        if tensor.shape == want.shape:
            return tensor
        if tkey == first_key and tensor.ndim == 4 and tensor.shape[0] == want.shape[0] \
                and tensor.shape[2:] == want.shape[2:]:
            return adapt_first_conv(tensor, want.shape[1])
        return None

    def take(tkey: str, skey: str) -> bool:
        tensor = fits(tkey, source[skey])
        if tensor is None:
            return False
        if tensor.shape != source[skey].shape:
            report.adapted.append(tkey)
        out[tkey] = tensor.to(target[tkey].dtype)
        used.add(skey)
        if skey != tkey:
            report.renamed[tkey] = skey
        return True

    for tkey in target:
        if tkey in source:
            take(tkey, tkey)
    by_suffix: dict[str, list[str]] = {}
    for skey in source:
        if skey in used:
            continue
        parts = skey.split(".")
        for i in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(skey)
    for tkey in target:
        if tkey not in out and len(by_suffix.get(tkey, [])) == 1 and by_suffix[tkey][0] not in used:
            take(tkey, by_suffix[tkey][0])
    rest_t = [k for k in target if k not in out]
    rest_s = [k for k in source if k not in used]
    j = 0
    for tkey in rest_t:
        k = j
        while k < len(rest_s) and fits(tkey, source[rest_s[k]]) is None:
            k += 1
        if k < len(rest_s):
            if take(tkey, rest_s[k]):
                j = k + 1
    report.loaded = sorted(out)
    report.missing = [k for k in target if k not in out]
    report.unused = [k for k in source if k not in used]
    return out, report


def load_into(net: nn.Module, source: Mapping[str, torch.Tensor], origin: str,
              first_conv: str | None = None, *, explicit: bool = False) -> LoadReport:
    """Load ``source`` into ``net`` with key matching; fail if nothing (or, for ``explicit`` maps, anything) is missing.

    ``num_batches_tracked`` counters are bookkeeping and not reported as missing.
    """
    target = net.state_dict()
    if explicit:
        matched, report = {}, LoadReport(source="")
        for k, v in source.items():
            if k in target and v.shape == target[k].shape:
                matched[k] = v
            elif k in target and k == f"{first_conv}.weight":
                matched[k] = adapt_first_conv(v, target[k].shape[1])
                report.adapted.append(k)
        report.loaded = sorted(matched)
        report.missing = [k for k in target if k not in matched]
        report.unused = [k for k in source if k not in matched]
    else:
        matched, report = match_state_dict(target, source, first_conv)
    report.source = origin
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if not report.loaded:
        raise WeightsNotFoundError(f"{origin}: no tensor matches this backbone ({len(source)} tensors in the file, "
                                   f"e.g. {list(source)[:3]}; the model expects e.g. {list(target)[:3]})")
    if explicit and report.missing:
        raise WeightsNotFoundError(f"{origin}: key map incomplete, not loaded: {report.missing[:5]}")
    net.load_state_dict(matched, strict=False)
    return report


def load_checkpoint(path: Path, required: Sequence[str] = ("model",)) -> dict[str, Any]:
    """A checkpoint's dict; a missing, empty, truncated (interrupted copy) or foreign file is an ``InputError``
    naming it, never a torch/pickle traceback. ``required``: keys the dict must have."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist (is this a finished run?)")
    if path.is_dir() or path.stat().st_size == 0:
        raise InputError(path, "checkpoint is " + ("a directory" if path.is_dir() else "an empty file"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - zip/pickle/EOF errors of a damaged file
        first = str(exc).strip().splitlines()[0].split(". ")[0][:120] if str(exc).strip() else ""
        raise InputError(path, f"checkpoint is truncated or corrupt (an interrupted write or copy?): "
                               f"{type(exc).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise InputError(path, f"not a cxrlab checkpoint (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in required if k not in state]
    if missing:
        raise InputError(path, f"not a cxrlab checkpoint: no {', '.join(map(repr, missing))} entry "
                               f"(has: {', '.join(map(str, list(state)[:8]))})")
    return state


def load_state(model: torch.nn.Module, state: Any, path: Path, what: str) -> None:
    """``model.load_state_dict`` with one sentence instead of torch's key listing when the weights do not fit."""
    if not isinstance(state, dict):
        raise InputError(path, f"not a cxrlab checkpoint: 'model' holds a {type(state).__name__}, not weights")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and hasattr(state[k], "shape")
                and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {name}, e.g. {v[0]}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if v]
        raise InputError(path, f"checkpoint weights do not fit the {what} recipe.yaml describes ({'; '.join(parts)}): "
                               "a run of an incompatible cxrlab version, or files of two runs mixed up")
    model.load_state_dict(state)
