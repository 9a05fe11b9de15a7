"""The service configuration (``SERVICE.yaml``): which run directories to load, the backend, the safety limits.

Every model is optional: the service runs whichever stages have a run directory. Relative paths in the YAML
are resolved against the YAML file's folder, so a demo folder can be moved as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cxrlab.config import read_yaml_mapping
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_text

#: Model roles the service knows, in pipeline order.
ROLES = ("lung", "diagnosis", "icu", "opacity")
TOKEN_ENV = "CXRLAB_SERVICE_TOKEN"


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lung: Path | None = Field(None, description="lung segmentation run (anatomy)")
    diagnosis: Path | None = Field(None, description="diagnosis classifier run")
    icu: Path | None = Field(None, description="ICU-admission (prognosis) classifier run")
    opacity: Path | None = Field(None, description="opacity / disease segmentation run (severity)")

    def present(self) -> dict[str, Path]:
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(32 * 2**20, gt=0)
    max_pixels: int = Field(50_000_000, gt=0, description="width x height, checked before decoding")
    min_side: int = Field(64, gt=0)
    max_batch: int = Field(16, gt=0)


class QualityGateConfig(BaseModel):
    """The image-quality gate (``cxrlab quality train``). Without a run, uploads are "not checked"."""

    model_config = ConfigDict(extra="forbid")

    run: Path | None = Field(None, description="quality run directory")
    lateral: Literal["refuse", "warn"] = Field("refuse", description="a lateral film: 422, or analysed "
                                               "without scores and a warning")
    non_chest: Literal["refuse", "warn"] = Field("refuse", description="not a chest radiograph: 422, or shown "
                                                 "without scores and a warning")


class SimilarConfig(BaseModel):
    """The similar-case index (``cxrlab index build``) behind ``POST /v1/similar``; none: the route answers 404."""

    model_config = ConfigDict(extra="forbid")

    index: Path | None = Field(None, description="index folder")
    k: int = Field(5, ge=1, le=50, description="patients returned per query")


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    quality: QualityGateConfig = Field(default_factory=QualityGateConfig)
    similar: SimilarConfig = Field(default_factory=SimilarConfig)
    backend: str = "torch-fp32"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: Name of the environment variable holding the bearer token (never the token itself in a file).
    token_env: str = TOKEN_ENV
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    result_ttl_s: float = Field(3600.0, gt=0)
    store_dir: Path | None = Field(None, description="result store folder; default: a private temporary folder")
    heatmap: bool = True
    cam_method: str = "gradcam"
    # auto: the diagnosis heatmap from the forward pass where Grad-CAM reduces to CAM (GAP + linear head), else
    # Grad-CAM's backward pass; backward: always the backward pass (the path before #14, kept for comparison)
    heatmap_pass: Literal["auto", "backward"] = "auto"
    torch_threads: int | None = Field(None, gt=0)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from cxrlab.export.backends import list_backends

        if v not in list_backends():
            raise ValueError(f"unknown backend {v!r}; known: {', '.join(list_backends())}")
        return v

    def token(self) -> str | None:
        return os.environ.get(self.token_env) or None


def _existing_dir(path: Path, base: Path, key: str, what: str) -> Path:
    """``path`` resolved against the config's folder; a ConfigError naming ``key`` when it is not a folder."""
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_dir():
        raise ConfigError(f"service config: {key}: {what} {path} does not exist")
    return path


def _resolve(cfg: ServiceConfig, base: Path) -> ServiceConfig:
    models = {role: _existing_dir(p, base, f"models.{role}", "run directory")
              for role, p in cfg.models.present().items()}
    store = cfg.store_dir
    if store is not None and not store.is_absolute():
        store = (base / store).resolve()
    quality, similar = cfg.quality, cfg.similar
    if quality.run is not None:
        quality = quality.model_copy(update={"run": _existing_dir(quality.run, base, "quality.run", "run directory")})
    if similar.index is not None:
        similar = similar.model_copy(update={"index": _existing_dir(similar.index, base, "similar.index",
                                                                   "index folder")})
    return cfg.model_copy(update={"models": ModelsConfig(**models), "store_dir": store, "quality": quality,
                                  "similar": similar})


def load_service_config(path: str | Path, **overrides: Any) -> ServiceConfig:
    """Read and validate ``SERVICE.yaml``; ``overrides`` (non-None) replace top-level keys (CLI flags)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "service config")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return _resolve(_validate(raw, str(path)), path.parent.resolve())


def config_from_runs(runs: dict[str, Path], **options: Any) -> ServiceConfig:
    """A config for ``cxrlab serve RUN...`` (roles already decided), resolved against the working folder."""
    raw = {"models": {k: str(v) for k, v in runs.items()}, **{k: v for k, v in options.items() if v is not None}}
    return _resolve(_validate(raw, "command line"), Path.cwd())


def _validate(raw: dict[str, Any], where: str) -> ServiceConfig:
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"service config {where}: {field}: {first['msg']}") from None


def write_service_config(
    out_path: str | Path,
    lung_run: str | Path | None = None,
    diagnosis_run: str | Path | None = None,
    icu_run: str | Path | None = None,
    opacity_run: str | Path | None = None,
    *,
    backend: str = "torch-fp32",
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Any,
) -> Path:
    """Write a validated ``SERVICE.yaml`` (used by ``cxrlab demo`` for ``make serve``); returns its path.

    Run paths inside the config's folder are written relative to it, so the folder can be moved.
    """
    out_path = Path(out_path)
    base = out_path.parent.resolve()
    models: dict[str, str] = {}
    for role, run in zip(ROLES, (lung_run, diagnosis_run, icu_run, opacity_run)):
        if run is None:
            continue
        p = Path(run).resolve()
        models[role] = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    quality = options.get("quality")
    if isinstance(quality, dict) and quality.get("run") is not None:  # relative to the config, like the models
        q = Path(quality["run"]).resolve()
        options["quality"] = {**quality, "run": str(q.relative_to(base)) if q.is_relative_to(base) else str(q)}
    raw = {"models": models, "backend": backend, "host": host, "port": port, **options}
    _validate(raw, str(out_path))
    text = "# cxrlab service: `cxrlab serve --config " + out_path.name + "`\n" + yaml.safe_dump(raw, sort_keys=False)
    atomic_write_text(out_path, text)
    return out_path
