"""The analysis pipeline behind the service: decode → quality checks → whichever model stages are configured.

Each configured run directory becomes one *stage* (``cxrlab.serve.stages``: lung segmentation, opacity
segmentation + severity scores, diagnosis + Grad-CAM + concordance, ICU risk). Stages work on a batch of
:class:`Case` objects so batch requests use batched inference; each records its wall time per image.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cxrlab.data import schema
from cxrlab.errors import CxrlabError, InputError
from cxrlab.io import ColorImageWarning, ImageHeader, read_image_bytes
from cxrlab.serve import render
from cxrlab.serve.config import ROLES, ServiceConfig
from cxrlab.quality.rules import image_checks, mask_checks
from cxrlab.utils import json_safe


@dataclass
class Case:
    """One image travelling through the stages; stages add masks, maps and report sections."""

    image: np.ndarray                      # float32 HxW in [0, 1]
    header: ImageHeader
    masks: dict[str, np.ndarray] = field(default_factory=dict)   # sample-dict mask keys (cxrlab.data.schema)
    heatmap: np.ndarray | None = None      # float32 [0, 1], any size (resized for display)
    report: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Analysis:
    report: dict[str, Any]
    images: dict[str, np.ndarray]          # name -> uint8 gray/BGR/BGRA, stored as <name>.png


def decode_upload(data: bytes, *, max_pixels: int, min_side: int) -> Case:
    """Decode one upload (type by content); colour photographs are refused as not being radiographs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColorImageWarning)
        try:
            image, header = read_image_bytes(data, "upload", max_pixels=max_pixels, min_size=min_side)
        except ColorImageWarning:
            raise InputError("upload", "colour image: not a chest radiograph") from None
        except CxrlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder choking on hostile bytes is bad input, not a 500
            raise InputError("upload", f"unreadable image ({type(exc).__name__})") from None
    return Case(image=image, header=header)


class AnalysisPipeline:
    def __init__(self, stages: Sequence[Any], *, backend: str, max_pixels: int = 50_000_000, min_side: int = 64,
                 gate: Any | None = None, non_chest: str = "refuse", lateral: str = "refuse"):
        self.stages = list(stages)
        self.backend = backend
        self.max_pixels, self.min_side = max_pixels, min_side
        self.gate = gate  # cxrlab.quality.QualityGate or None
        self.non_chest, self.lateral = non_chest, lateral

    @classmethod
    def from_config(cls, config: ServiceConfig) -> "AnalysisPipeline":
        from cxrlab.serve.stages import create_stages

        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        # numpy's OpenBLAS only multiplies small arrays in this pipeline; once woken, its idle threads spin and
        # slowed the networks ~1.5x on a 2-core CPU (measured: a dot product in the quality checks). One thread.
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        stages = create_stages(config.models.present(), backend=config.backend, cam_method=config.cam_method,
                               heatmap_pass=config.heatmap_pass)
        gate = None
        if config.quality.run is not None:
            from cxrlab.quality import QualityGate

            # the gate only says "refuse" for a lateral; the service decides what a refusal means (422 or warn)
            gate = QualityGate.load(config.quality.run, lateral_policy="refuse")
        return cls(stages, backend=config.backend, max_pixels=config.limits.max_pixels,
                   min_side=config.limits.min_side, gate=gate, non_chest=config.quality.non_chest,
                   lateral=config.quality.lateral)

    @property
    def stage_names(self) -> list[str]:
        return [s.role for s in self.stages]

    def model_cards(self) -> list[dict[str, Any]]:
        cards = [s.card() for s in self.stages]
        if self.gate is not None:
            cards.append({"role": "quality", **self.gate.card(), "lateral": self.lateral,
                          "non_chest": self.non_chest})
        return cards

    def apply_gate(self, cases: list[tuple[int, Case]], out: list) -> tuple[list, list]:
        """Judge every decoded case: refused ones become errors (422) or, under a ``warn`` policy, are shown
        without any model output; inverted ones are corrected. Returns (cases to analyse, cases held back)."""
        from cxrlab.quality import NOT_CHECKED

        if self.gate is None:
            for _, case in cases:
                case.report["quality"]["gate"] = NOT_CHECKED
            return cases, []
        results = self.gate.check_many([c.image for _, c in cases])
        go, held = [], []
        for (i, case), res in zip(cases, results):
            q = res.to_dict()
            q.pop("image")
            case.report["quality"].update(gate="checked", **q)
            case.report["quality"]["lateral_view"] = res.view == "lateral" or bool(case.report["quality"].get(
                "lateral_view"))
            if res.inverted:
                case.image = res.corrected
            if res.verdict == "warn":
                case.report["quality"].setdefault("notes", []).extend(f"quality gate: {r}" for r in res.reasons)
            if res.verdict == "refuse":
                policies = {self.non_chest for r in res.reasons if r.startswith("not a chest")} | \
                    {self.lateral for r in res.reasons if r.startswith("lateral")}
                if "refuse" in policies:
                    out[i] = InputError("upload", "; ".join(res.reasons) + " (refused by the quality gate)")
                    continue
                case.report["quality"].setdefault("notes", []).append(
                    "quality gate: " + "; ".join(res.reasons) + ". No model was run: findings and scores would "
                    "not be valid for this image")
                held.append((i, case))
                continue
            go.append((i, case))
        return go, held

    def run(self, cases: list[Case], *, heatmap: bool = True) -> None:
        """Run every stage on ``cases`` in role order, timing each stage per image."""
        order = {role: i for i, role in enumerate(ROLES)}
        for stage in sorted(self.stages, key=lambda s: order[s.role]):
            # A stage returns the seconds each of its steps took for the whole batch (e.g. preprocess,
            # lung_segmentation); the report shows the per-image share in ms.
            seconds = stage.run(cases, heatmap=heatmap)
            for case in cases:
                for name, s in seconds.items():
                    case.timings_ms[name] = round(1000 * s / len(cases), 2)
            if stage.role == "lung":
                for case in cases:
                    merge_quality(case.report["quality"], mask_checks(case.image, case.masks, case.header))

    def analyze_many(self, datas: Sequence[bytes], *, heatmap: bool = True) -> list[Analysis | CxrlabError]:
        """Decode and analyse; an undecodable item yields its error in place, the others still run."""
        out: list[Analysis | CxrlabError | None] = [None] * len(datas)
        cases: list[tuple[int, Case]] = []
        for i, data in enumerate(datas):
            t0 = time.perf_counter()
            try:
                case = decode_upload(data, max_pixels=self.max_pixels, min_side=self.min_side)
                case.timings_ms["decode"] = round(1000 * (time.perf_counter() - t0), 2)
                case.report["quality"] = image_checks(case.image, case.header)
            except CxrlabError as exc:
                out[i] = exc
                continue
            cases.append((i, case))
        if cases:
            cases, held = self.apply_gate(cases, out)
            for i, case in held:
                out[i] = self.finish(case)
        if cases:
            try:
                self.run([c for _, c in cases], heatmap=heatmap)
                done = cases
            except InputError:
                # One image a stage cannot take (e.g. no lung for a lung-ROI classifier) must not fail the
                # others: run them one by one and keep each one's error.
                done = []
                for i, case in cases:
                    case.report, case.timings_ms = {"quality": case.report["quality"]}, dict(case.timings_ms)
                    try:
                        self.run([case], heatmap=heatmap)
                        done.append((i, case))
                    except InputError as exc:
                        out[i] = exc
            for i, case in done:
                out[i] = self.finish(case)
        return out  # type: ignore[return-value]

    def analyze(self, data: bytes, *, heatmap: bool = True) -> Analysis:
        result = self.analyze_many([data], heatmap=heatmap)[0]
        if isinstance(result, CxrlabError):
            raise result
        return result

    def finish(self, case: Case) -> Analysis:
        """Render display images and assemble the JSON report of one case."""
        t0 = time.perf_counter()
        scale = render.display_scale(case.image.shape)
        gray = render.to_display(case.image, scale)
        lungs = {name: case.masks[key] for name, key in (("patient_right", schema.KEY_RIGHT_MASK),
                                                         ("patient_left", schema.KEY_LEFT_MASK)) if key in case.masks}
        outlines = dict(lungs)
        if schema.KEY_DISEASE_MASK in case.masks:
            outlines["disease"] = case.masks[schema.KEY_DISEASE_MASK]
        heat = render.heatmap_rgba(case.heatmap, gray.shape) if case.heatmap is not None else None
        images: dict[str, np.ndarray] = {"image": gray, "overlay": render.overlay(gray, outlines, heat)}
        if heat is not None:
            images["heatmap"] = heat
        case.timings_ms["render"] = round(1000 * (time.perf_counter() - t0), 2)
        case.timings_ms["total"] = round(sum(v for k, v in case.timings_ms.items() if k != "total"), 2)
        h = case.header
        report = {
            "image": {"width": int(case.image.shape[1]), "height": int(case.image.shape[0]), "format": h.format,
                      "view_position": h.view_position, "display_width": int(gray.shape[1]),
                      "display_height": int(gray.shape[0])},
            "stages": self.stage_names,
            "backend": self.backend,
            "models": {s.role: s.version() for s in self.stages},
            **case.report,
            "timings_ms": case.timings_ms,
        }
        report = json_safe(report)
        # contours are lists of plain finite floats already: walking their thousands of points through json_safe
        # cost more than drawing them (~2 ms an image)
        report["contours"] = {k: render.contours(m, scale) for k, m in outlines.items()}
        return Analysis(report=report, images=images)

    def warmup(self) -> None:
        """One pass on a synthetic image so the first request does not pay for lazy initialisation."""
        if self.stages:
            rng = np.random.default_rng(0)
            image = rng.random((256, 256), dtype=np.float32)
            header = ImageHeader(format="png", rows=256, columns=256, bits_stored=8, photometric="MONOCHROME2")
            case = Case(image=image, header=header, report={"quality": {}})
            self.run([case], heatmap=True)


def merge_quality(quality: dict[str, Any], mask_flags: dict[str, Any]) -> None:
    """Add the lung-mask checks to a case's quality section: notes are appended, and the learned gate's
    polarity verdict (made before any correction) is not replaced by the mask heuristic's."""
    notes = quality.setdefault("notes", [])
    for key, value in mask_flags.items():
        if key == "notes":
            notes.extend(value)
        elif key == "inverted" and quality.get("gate") == "checked":
            continue
        else:
            quality[key] = value
