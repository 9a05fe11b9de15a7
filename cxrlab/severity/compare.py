"""The severity-scoring paper's decoder study: several Stage II decoders on one Stage I, one split, one budget.

``compare_decoders(config, decoders, out)`` trains one severity run per decoder (the config's ``disease.arch``
replaced, everything else — Stage I, manifests, seed and so the patient-level split, size, epochs — shared),
evaluates each on the held-out part of that split and measures both stages together:

- infection Dice and IoU per image (mean over images with disease) and pooled, with patient-level bootstrap
  95 % CIs of the per-image means;
- the 0–6 zone-count score's MAE against the count computed from the ground-truth masks (the paper's protocol;
  normal images included, with a reference count of 0 also when they have no mask file) with its CI;
- the per-lung 0–3 opacity grade's macro-MAE (grades from predicted vs ground-truth involvement);
- the false-positive disease area on normal images;
- images/s of read → Stage I → Stage II → scores on the same images and backend, parameters and MACs of both
  networks together (MACs = FLOPs / 2, PyTorch's FlopCounterMode at each network's own input size).

Each decoder's run lives in ``out/<decoder>/`` (an ordinary severity run) with its figures in
``out/<decoder>/compare.json``; a killed study resumes: finished decoders are skipped, an interrupted one resumes
its training. The split must come out identical for every decoder (it depends on the seed and the rows only);
the study checks it and refuses to compare otherwise. ``write_comparison`` renders the table (Markdown) and the
paper's scatter plot (score MAE vs images/s, marker area ∝ MACs).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_json, atomic_write_text

Progress = Callable[[str, int, int, str], None]

#: the paper's nine segmentation-models-pytorch decoders, in its order
DECODERS = ("unet", "unetplusplus", "deeplabv3", "deeplabv3plus", "fpn", "linknet", "pspnet", "pan", "manet")
RESULT_FILE = "compare.json"


def decoder_config(config: Any, decoder: str, out: Path) -> Any:
    """The shared config with Stage II's decoder replaced and the run placed under ``out/<decoder>``.

    Every decoder gets segmentation-models-pytorch's default decoder (as in the paper): ``disease.arch_kwargs``
    keeps only ``encoder_depth`` (the shared encoder), because the other keys mean different things to different
    decoders (``decoder_channels`` is a list for U-Net, a number for DeepLabV3); with a shallower encoder the
    U-Net-like decoders take the first ``encoder_depth`` of smp's default widths."""
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
    kwargs = {k: v for k, v in (config.disease.get("arch_kwargs") or {}).items() if k == "encoder_depth"}
    depth = kwargs.get("encoder_depth", 5)
    if decoder in ("unet", "unetplusplus", "manet") and depth != 5:
        # these decoders need one width per encoder stage: smp's default widths, deepest first
        kwargs["decoder_channels"] = [256, 128, 64, 32, 16][:depth]
    return config.model_copy(update={"disease": {**config.disease, "arch": decoder, "arch_kwargs": kwargs},
                                     "out": str(out / decoder), "name": f"{config.name}-{decoder}"}, deep=True)


def _split_digest(run: Path) -> str:
    split = pd.read_csv(run / "disease" / "split.csv", dtype=str).sort_values(schema.IMAGE)
    return hashlib.sha256(split[[schema.IMAGE, "split"]].to_csv(index=False).encode()).hexdigest()[:16]


def held_out_rows(run: Path, part: str = "test") -> pd.DataFrame:
    """The rows of the run's disease manifest in ``part`` of its Stage II split."""
    from cxrlab.data.manifest import load_manifest

    df = load_manifest(run / "disease_manifest.csv").df
    parts = pd.read_csv(run / "disease" / "split.csv", dtype=str)
    return df[df[schema.IMAGE].map(dict(zip(parts[schema.IMAGE], parts["split"]))) == part].reset_index(drop=True)


def network_size(pipe: Any) -> dict[str, float]:
    """Parameters and MACs of Stage I and Stage II (the networks the pipeline was built from)."""
    import torch

    from cxrlab.machine import count_flops

    out: dict[str, float] = {}
    for name, seg in (("lung", pipe.lung), ("disease", pipe.disease)):
        size = seg.config.size
        sample = torch.rand(1, seg.in_channels, size, size)
        out[f"{name}_params_m"] = sum(p.numel() for p in seg.model.parameters()) / 1e6
        out[f"{name}_gmacs"] = count_flops(seg.model, sample) / 2e9
    out["params_m"] = out["lung_params_m"] + out["disease_params_m"]
    out["gmacs"] = out["lung_gmacs"] + out["disease_gmacs"]
    return out


def evaluate_decoder(run: Path, *, part: str = "test", backend: str = "auto", speed_images: int = 32,
                     batch_size: int = 8, n_boot: int = 200, progress: Progress | None = None) -> dict[str, Any]:
    """The figures of one decoder's severity run (see the module docstring)."""
    import torch

    from cxrlab.severity.evaluation import predict_rows, segmentation_cis, summarize_severity
    from cxrlab.severity.pipeline import SeverityPipeline

    pipe = SeverityPipeline.from_run(run, backend=backend)
    rows = held_out_rows(run, part)
    if rows.empty:
        raise ConfigError(f"{run}: the {part} part of the Stage II split is empty")
    pred = predict_rows(pipe, rows, batch_size=batch_size, progress=progress, stage=f"{run.name}: evaluate")
    summary = summarize_severity(pred, n_boot=n_boot)
    cis = segmentation_cis(pred, n_boot=n_boot)
    result: dict[str, Any] = {
        "decoder": run.name, "part": part, "n_images": int(len(rows)), "backend": pipe.backend,
        "disease": summary.get("disease", {}), "normal_false_positive": summary.get("normal_false_positive", {}),
        # the per-lung 0–3 grade's macro-MAE with its patient-level bootstrap CI ({value, low, high, n_boot})
        "grade_macro_mae": summary.get("involvement", {}).get("grade_macro_mae") or {},
        "failed_images": summary.get("failed_images", 0),
    }
    if "dice_mean" in cis:
        result["dice_mean_ci"], result["iou_mean_ci"] = cis["dice_mean"], cis["iou_mean"]
    if "zone_count_mae" in cis:
        result["zone_count_mae_ci"] = cis["zone_count_mae"]
        result["zone_count_n"] = cis["zone_count_mae"]["n"]
    paths = rows[schema.IMAGE].astype(str).tolist()[:speed_images]
    pipe.throughput(paths[: min(len(paths), batch_size)], batch_size=batch_size)  # warm-up: first calls compile
    speed = pipe.throughput(paths, batch_size=batch_size)
    result["images_per_s"] = speed["images_per_s"]
    result["speed_images"] = speed["images"]
    result["torch_threads"] = torch.get_num_threads()  # the timing's own thread count (the record's is at start)
    result.update(network_size(pipe))
    return result


def compare_decoders(config: Any, out: str | Path, decoders: Sequence[str] = DECODERS, *,
                     overrides: list[str] | None = None, part: str = "test", backend: str = "auto",
                     speed_images: int = 32, batch_size: int = 8, n_boot: int = 200,
                     progress: Progress | None = None, on_decoder: Callable[[str, dict], None] | None = None
                     ) -> dict[str, Any]:
    """Train (or resume) and evaluate one severity run per decoder under ``out``; returns the study's results
    (also written to ``out/comparison.json``). Decoders whose ``compare.json`` exists are not redone."""
    from cxrlab.machine import load_average, machine_info
    from cxrlab.severity.config import load_severity_config
    from cxrlab.severity.train import train_severity

    if not decoders:
        raise ConfigError("severity compare: no decoders given")
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ConfigError(f"unknown decoder(s) {unknown}; choose from {', '.join(DECODERS)}")
    cfg = load_severity_config(config, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study_file = out / "study.json"
    study = {"config": cfg.model_dump(mode="json"), "decoders": list(decoders), "part": part, "backend": backend}
    if study_file.exists():
        before = json.loads(study_file.read_text())
        if before.get("config") != study["config"] or before.get("part") != part:
            raise ConfigError(f"{out} holds a comparison with another config; choose another --out")
    atomic_write_json(study_file, study)
    results: dict[str, dict[str, Any]] = {}
    digests: dict[str, str] = {}
    started = {"machine": machine_info(), "load_before": load_average(),
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    computed = False
    for i, decoder in enumerate(decoders):
        run_cfg = decoder_config(cfg, decoder, out)
        run = Path(run_cfg.out)
        result_file = run / RESULT_FILE
        if result_file.exists():
            results[decoder] = json.loads(result_file.read_text())
        else:
            t0 = time.perf_counter()
            if not (run / "severity.json").exists():
                train_severity(run_cfg, resume=(run / "recipe.yaml").exists(), progress=progress)
            train_s = time.perf_counter() - t0
            result = evaluate_decoder(run, part=part, backend=backend, speed_images=speed_images,
                                      batch_size=batch_size, n_boot=n_boot, progress=progress)
            result["train_seconds"] = round(train_s, 1)
            result["load_after"] = load_average()
            atomic_write_json(result_file, result)
            results[decoder] = result
            computed = True
        digests[decoder] = _split_digest(run)
        if on_decoder is not None:
            on_decoder(decoder, results[decoder])
        if progress is not None:
            progress("decoders", i + 1, len(decoders), decoder)
    if len(set(digests.values())) > 1:
        raise ConfigError(f"decoders were trained on different splits ({digests}); the comparison is not valid")
    ended = {"load_after": load_average()}
    previous = out / "comparison.json"
    if not computed and previous.exists():  # a rerun that only rewrites the page keeps the runs' own provenance
        before = json.loads(previous.read_text())
        if set(before.get("results", {})) == set(results):
            started = {k: before[k] for k in ("machine", "load_before", "date_utc") if k in before}
            ended = {"load_after": before.get("load_after")}
    comparison = {**started, **ended, "split_digest": next(iter(digests.values())),
                  "config": cfg.model_dump(mode="json"), "part": part, "decoders": list(decoders),
                  "results": results}
    atomic_write_json(out / "comparison.json", comparison)
    return comparison


def comparison_table(comparison: dict[str, Any]) -> pd.DataFrame:
    """One row per decoder: the figures of the paper's study (NaN where a figure could not be computed)."""
    rows = []
    order = comparison.get("decoders") or list(comparison["results"])  # the study's order (JSON sorts keys)
    for decoder in order:
        r = comparison["results"][decoder]
        d, fp = r.get("disease", {}), r.get("normal_false_positive", {})
        dice_ci, iou_ci, zc = r.get("dice_mean_ci", {}), r.get("iou_mean_ci", {}), r.get("zone_count_mae_ci", {})
        grade = r.get("grade_macro_mae") if isinstance(r.get("grade_macro_mae"), dict) else {}
        rows.append({
            "decoder": decoder, "dice_mean": d.get("dice_mean", np.nan), "dice_low": dice_ci.get("low", np.nan),
            "dice_high": dice_ci.get("high", np.nan), "dice_pooled": d.get("dice_pooled", np.nan),
            "iou_mean": d.get("iou_mean", np.nan), "iou_low": iou_ci.get("low", np.nan),
            "iou_high": iou_ci.get("high", np.nan), "iou_pooled": d.get("iou_pooled", np.nan),
            "zone_count_mae": zc.get("value", np.nan), "zone_count_low": zc.get("low", np.nan),
            "zone_count_high": zc.get("high", np.nan), "grade_macro_mae": grade.get("value", np.nan),
            "grade_low": grade.get("low", np.nan), "grade_high": grade.get("high", np.nan),
            "fp_area_normal": fp.get("fp_area_mean", np.nan), "fp_any_normal": fp.get("images_with_any", np.nan),
            "images_per_s": r.get("images_per_s", np.nan), "params_m": r.get("params_m", np.nan),
            "gmacs": r.get("gmacs", np.nan), "train_seconds": r.get("train_seconds", np.nan),
        })
    return pd.DataFrame(rows)


def _ci(v: float, lo: float, hi: float, digits: int = 3) -> str:
    if not np.isfinite(v):
        return "–"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{v:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"
    return f"{v:.{digits}f}"


def comparison_markdown(table: pd.DataFrame) -> str:
    head = ("| decoder | Dice per image (95 % CI) | Dice pooled | IoU per image (95 % CI) | IoU pooled | zone-count MAE, "
            "all films with normals (95 % CI) | grade macro-MAE (95 % CI) | FP area on normals | "
            "images/s (both stages) | params (M) | GMACs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in table.itertuples():
        lines.append(f"| {r.decoder} | {_ci(r.dice_mean, r.dice_low, r.dice_high)} | {r.dice_pooled:.3f} | "
                     f"{_ci(r.iou_mean, r.iou_low, r.iou_high)} | {r.iou_pooled:.3f} | "
                     f"{_ci(r.zone_count_mae, r.zone_count_low, r.zone_count_high, 2)} | "
                     f"{_ci(r.grade_macro_mae, r.grade_low, r.grade_high)} | {100 * r.fp_area_normal:.2f} % | {r.images_per_s:.1f} | "
                     f"{r.params_m:.2f} | {r.gmacs:.2f} |")
    return "\n".join(lines)


def comparison_plot(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """The paper's figure: zone-count score MAE against images/s, marker area proportional to MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    macs = table["gmacs"].to_numpy(float)
    sizes = 60 + 600 * macs / max(np.nanmax(macs), 1e-9)
    ax.scatter(table["images_per_s"], table["zone_count_mae"], s=sizes, alpha=0.5, edgecolor="k")
    for r in table.itertuples():
        ax.annotate(r.decoder, (r.images_per_s, r.zone_count_mae), fontsize=8, ha="center", va="bottom",
                    xytext=(0, 6), textcoords="offset points")
    ax.set_xlabel("images/s (Stage I + Stage II + scores)")
    ax.set_ylabel("zone-count score MAE (0–6) vs ground-truth masks")
    ax.set_title(title or "Stage II decoders: accuracy vs speed (marker area ∝ MACs)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def comparison_notes(comparison: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """What a reader of the table must know: decoders that learned nothing at this budget, how the speed was
    timed, and what one seed at one budget can and cannot show."""
    notes = []
    idle = table.loc[table["dice_pooled"].fillna(0) <= 0, "decoder"].tolist()
    if idle:
        notes.append(f"Not trained enough at this budget: {', '.join(idle)} found none of the reference disease on "
                     "any test film (its Stage II predicts nothing; the validation history shows the score of an "
                     "empty mask). Its row measures the budget, not the decoder.")
    results = [comparison["results"][d] for d in table["decoder"]]
    threads = sorted({r["torch_threads"] for r in results if "torch_threads" in r})
    backends = sorted({str(r.get("backend")) for r in results if r.get("backend")})
    timing = f"{results[0].get('speed_images', '?')} test films" if results else "test films"
    notes.append(f"Speed: {timing} through both stages and the scores (reading included, no overlay) after a "
                 f"warm-up batch, backend {', '.join(backends) or '?'}"
                 + (f", {', '.join(map(str, threads))} torch thread(s)" if threads else "")
                 + "; parameters and MACs of both stages at the run's input size.")
    notes.append("Reference: the scoring paper's best pair (DeepLabV3+ lungs, MA-Net disease) reached a score MAE of "
                 "0.30 on its own test set and training budget; the figures above are one seed at the budget "
                 "stated, so they rank how far each decoder gets with that budget, not its capacity. The zone-count "
                 "MAE counts every test film: a normal film's reference is 0.")
    return notes


def write_comparison(comparison: dict[str, Any], out: str | Path, doc: str | Path | None = None,
                     command: str | None = None) -> dict[str, Path]:
    """``comparison.md`` (table + provenance) and ``comparison.png`` under ``out``; with ``doc`` the page is
    written there instead, its plot beside it (``<doc stem>.png``), e.g. into ``docs/benchmarks/``."""
    out = Path(out)
    md_path = Path(doc) if doc is not None else out / "comparison.md"
    table = comparison_table(comparison)
    plot = comparison_plot(table, md_path.with_suffix(".png") if doc is not None else out / "comparison.png")
    cfg = comparison["config"]
    disease = cfg.get("disease", {})
    text = "\n".join([
        "# Stage II decoder comparison",
        "",
        *([f"Produced by `{command}`.", ""] if command else []),
        f"- Machine: {comparison['machine']}; date (UTC) {comparison['date_utc']}; load before "
        f"{comparison['load_before']}, after {comparison['load_after']}.",
        f"- Stage I: `{cfg.get('lung_run')}`; Stage II budget: {json.dumps(disease)}; seed {cfg.get('seed')}; "
        f"split digest `{comparison['split_digest']}` (identical for every decoder); evaluated on the "
        f"`{comparison['part']}` part.",
        "",
        comparison_markdown(table),
        "",
        *[f"- {note}" for note in comparison_notes(comparison, table)],
        "",
        f"![decoders]({plot.name})",
        "",
    ])
    atomic_write_text(md_path, text)
    return {"markdown": md_path, "plot": plot}
