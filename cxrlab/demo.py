"""``run_demo(out_dir)``: the main job of ``make demo``, every cxrlab stage once on the built-in chest phantom.

Each step calls only the owning package's library API and writes under ``out_dir``:

1. ``data/``: the phantom (:func:`cxrlab.data.phantom.generate_phantom`) in ``data/phantom/``, imported through the
   ``cxrlab`` manifest-folder importer (exactly the code path of real data) into ``data/manifest.csv``, validated
   (issues in ``data/validation.csv``), split by patient into ``data/split.csv`` and summarised
   (``data/stats.json``). Every later stage reuses this one split, so no model is trained on patients that
   another stage holds out for testing.
2. ``lung/``: a small lung segmentation model (:func:`cxrlab.anatomy.train_segmentation`) in ``lung/run/`` and
   mask overlays of the test images in ``lung/overlays/``.
3. ``diagnosis/``: the learning engine's ``phantom-diagnosis`` recipe (:func:`cxrlab.train.train`).
   ``similar/``: every film embedded with that run (:func:`cxrlab.retrieval.embed`), a FAISS index of them
   (``similar/index/``) and one search of a test film (``similar/search.json``: top 3 other patients, each with
   its films in time order), as ``cxrlab index search --json`` prints it.
4. ``severity/``: the two-stage pipeline lungs → disease → scores (:func:`cxrlab.severity.train.train_severity`)
   in ``severity/run/``; scores, masks and overlays of the test images in ``severity/predict/``.
5. ``evaluation/``: the report of the diagnosis run (:func:`cxrlab.evaluate.build_report`), ``report.html``.
6. ``quality/``: the image-quality gate (:func:`cxrlab.quality.train_quality_gate`) trained on a second phantom
   with lateral films, in ``quality/run/``; it judges one frontal, one lateral and one inverted film.
7. ``service.yaml``: the viewer's config (:func:`cxrlab.serve.write_service_config`) that ``make serve`` starts;
   it names the gate, so the viewer refuses laterals and non-chest pictures and corrects inverted films.

Re-running overwrites: each step deletes its own folder first (the trainers refuse to overwrite a run), and an
``out_dir`` that holds anything but an earlier demo is refused rather than cleaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.table import Table

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.utils import atomic_path, atomic_write_json, atomic_write_text

MARKER = ".cxrlab-demo"  # written first: a folder with it is a demo folder this job may overwrite
RECORD = "demo.json"     # written last: settings, per-step seconds and outputs
STEP_DIRS = ("data", "lung", "diagnosis", "severity", "evaluation")
SPLIT_RATIOS = (0.6, 0.2, 0.2)  # enough test patients per diagnosis for the report even at 16 patients
DIAGNOSIS_RECIPE = "phantom-diagnosis"

Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run: the default for ``make demo`` (minutes on 2 shared cores), ``fast`` for tests."""

    n_patients: int
    max_studies: int
    size: int                 # phantom image side (overlays and the report show images at this size)
    seg_size: int             # segmentation input side (multiple of 32): lungs and disease are large structures
    lung_epochs: int
    disease_epochs: int
    diagnosis_epochs: int | None  # None: the recipe's own schedule
    lr: float
    batch_size: int
    threads: int              # torch threads: on a shared CPU more threads spin and stall (5-10x slower here)
    n_boot: int
    gallery_per_class: int
    max_hcs_images: int
    seed: int

    @classmethod
    def make(cls, *, size: int = 128, fast: bool = False, seed: int = 0) -> "DemoPlan":
        if size < 64 or size % 32:
            raise ConfigError(f"demo size must be a multiple of 32 and >= 64, got {size}")
        if fast:
            return cls(n_patients=16, max_studies=2, size=64, seg_size=64, lung_epochs=3, disease_epochs=1,
                       diagnosis_epochs=1, lr=3e-3, batch_size=4, threads=1, n_boot=50, gallery_per_class=1,
                       max_hcs_images=8, seed=seed)
        return cls(n_patients=40, max_studies=6, size=size, seg_size=64, lung_epochs=8, disease_epochs=8,
                   diagnosis_epochs=None, lr=3e-3, batch_size=16, threads=1, n_boot=200, gallery_per_class=2,
                   max_hcs_images=40, seed=seed)


class _Reporter:
    """Rich status lines per step and one progress bar per long call; silent when ``console`` is None."""

    def __init__(self, console: Console | None, n_steps: int):
        self.console, self.n_steps, self.index = console, n_steps, 0

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    @contextlib.contextmanager
    def step(self, title: str, detail: str) -> Iterator[dict[str, Any]]:
        """Announce a step, time it, and print its one-line result (``note`` set by the block)."""
        self.index += 1
        self.line(f"[bold cyan]▶ [{self.index}/{self.n_steps}] {title}[/]: {detail}")
        info: dict[str, Any] = {"note": ""}
        t0 = time.perf_counter()
        yield info
        info["seconds"] = round(time.perf_counter() - t0, 1)
        self.line(f"[bold green]✓ {title}[/] in {info['seconds']:.1f} s  {info['note']}")

    @contextlib.contextmanager
    def bars(self) -> Iterator[Progress]:
        """A ``progress(stage, done, total, status)`` callback (the anatomy/severity trainers' signature)."""
        if self.console is None:
            yield lambda *a: None
            return
        from cxrlab.cli._common import progress

        with progress() as bar:
            tasks: dict[str, Any] = {}

            def update(stage: str, done: int, total: int, status: str = "") -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, status=status)
                bar.update(tasks[stage], completed=done, total=total, status=status)

            yield update


def _prepare_out(out: Path) -> None:
    """Create ``out`` or accept an earlier demo folder; never clean a folder this job did not make."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "demo output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(out, f"folder is not empty and was not made by `cxrlab demo` (no {MARKER}); "
                              "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, "made by `cxrlab demo`; its step folders are overwritten on re-run\n")


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _frame(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.reset_index().to_json(orient="records"))


def _data_step(out: Path, plan: DemoPlan, rep: _Reporter) -> dict[str, Any]:
    from cxrlab.data.importers import import_dataset
    from cxrlab.data.manifest import save_manifest
    from cxrlab.data.phantom import generate_phantom
    from cxrlab.data.splits import save_split, split_patients
    from cxrlab.data.stats import summarise
    from cxrlab.data.validate import errors, issues_frame, validate_manifest

    data = _fresh(out / "data")
    with rep.bars() as bar:
        generate_phantom(data / "phantom", n_patients=plan.n_patients, size=plan.size, seed=plan.seed,
                         max_studies=plan.max_studies, n_jobs=min(2, os.cpu_count() or 1),
                         on_patient=lambda done, total: bar("phantom patients", done, total, ""))
    manifest = import_dataset("cxrlab", data / "phantom", out=data)
    manifest_path = save_manifest(manifest, data / "manifest.csv")
    issues = validate_manifest(manifest)
    with atomic_path(data / "validation.csv") as tmp:
        issues_frame(issues).to_csv(tmp, index=False)
    bad = errors(issues)
    if bad:
        raise InputError(manifest_path, f"{len(bad)} validation error(s), first: {bad[0]} "
                                        f"(all in {data / 'validation.csv'})")
    df = manifest.df.assign(split=split_patients(manifest.df, SPLIT_RATIOS, seed=plan.seed,
                                                 stratify=schema.FINDING).to_numpy())
    split_path = save_split(df, data / "split.csv")
    tables = summarise(manifest.df, split=df["split"])
    atomic_write_json(data / "stats.json", {name: _frame(t) for name, t in tables.items()})
    return {"phantom": data / "phantom", "manifest": manifest_path, "split": split_path,
            "stats": data / "stats.json", "validation": data / "validation.csv", "tables": tables,
            "n_images": len(df), "n_patients": int(df[schema.PATIENT_ID].nunique()),
            "n_warnings": len(issues) - len(bad), "frame": df}


def _lung_step(out: Path, plan: DemoPlan, data: dict[str, Any], rep: _Reporter) -> dict[str, Any]:
    from cxrlab.anatomy import LungSegmenter, train_segmentation
    from cxrlab.anatomy.overlay import mask_overlay
    from cxrlab.io import read_image, write_png

    folder = _fresh(out / "lung")
    config = {"name": "demo-lung", "arch": "unet", "encoder": "efficientnet_lite0", "weights": "imagenet",
              "size": plan.seg_size, "manifests": [str(data["manifest"])], "epochs": plan.lung_epochs,
              "lr": plan.lr, "batch_size": plan.batch_size, "threads": plan.threads, "seed": plan.seed,
              "split": {"split_csv": str(data["split"])}, "patience": plan.lung_epochs}
    with rep.bars() as bar:
        run = train_segmentation(config, out=folder / "run", progress=bar)
    seg = LungSegmenter.from_run(run)
    test = data["frame"][data["frame"]["split"] == "test"]
    overlays = folder / "overlays"
    images = [read_image(p)[0] for p in test[schema.IMAGE]]
    for path, image, masks in zip(test[schema.IMAGE], images, seg.predict_batch(images, batch_size=plan.batch_size)):
        write_png(overlays / f"{Path(path).stem}.png", mask_overlay(image, masks))
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": run, "overlays": overlays, "n_overlays": len(images), "metrics": metrics}


def _diagnosis_step(out: Path, plan: DemoPlan, data: dict[str, Any], rep: _Reporter) -> dict[str, Any]:
    from cxrlab.data.manifest import Manifest
    from cxrlab.train import train

    folder = _fresh(out / "diagnosis")
    # the demo's own patient-level split (data/split.csv) as the run's split column
    manifest = Manifest(data["frame"], source=data["manifest"])
    overrides = ["split.column=split", f"seed={plan.seed}", f"train.threads={plan.threads}"]
    if plan.diagnosis_epochs is not None:
        overrides.append(f"train.stages.0.epochs={plan.diagnosis_epochs}")
    run = train(DIAGNOSIS_RECIPE, [manifest], folder, overrides=overrides, show_progress=rep.console is not None)
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": run, "metrics": metrics}


def _similar_step(out: Path, plan: DemoPlan, data: dict[str, Any], diagnosis: dict[str, Any]) -> dict[str, Any]:
    from cxrlab.retrieval import CaseIndex, build_index, embed

    folder = _fresh(out / "similar")
    emb = embed(diagnosis["run"], data["manifest"], folder / "embeddings.parquet", batch_size=plan.batch_size)
    index = CaseIndex.load(build_index(emb, folder / "index"))
    frame = data["frame"]
    query = str(frame.loc[frame["split"] == "test", "image"].iloc[0])  # an indexed film: its patient is left out
    result = index.search([query], k=3)[0]
    atomic_write_json(folder / "search.json", result)
    return {"index": folder / "index", "search": folder / "search.json", "result": result, "n": len(index)}


def _severity_step(out: Path, plan: DemoPlan, data: dict[str, Any], lung: dict[str, Any],
                   rep: _Reporter) -> dict[str, Any]:
    from cxrlab.severity.evaluation import evaluate_severity
    from cxrlab.severity.pipeline import SeverityPipeline
    from cxrlab.severity.train import train_severity

    folder = _fresh(out / "severity")
    config = {"name": "demo-severity", "lung_run": str(lung["run"]), "manifests": [str(data["manifest"])],
              "disease": {"arch": "unet", "encoder": "efficientnet_lite0", "size": plan.seg_size,
                          "epochs": plan.disease_epochs, "lr": plan.lr, "batch_size": plan.batch_size,
                          "threads": plan.threads,
                          "patience": plan.disease_epochs, "split": {"split_csv": str(data["split"])}},
              "seed": plan.seed, "out": str(folder / "run")}
    test = data["frame"][data["frame"]["split"] == "test"]
    with rep.bars() as bar:
        run = train_severity(config, progress=bar)
        pipe = SeverityPipeline.from_run(run)
        table = pipe.predict_manifest(test, out_dir=folder / "predict", overlays=True, batch_size=plan.batch_size,
                                      on_batch=lambda done, total: bar("severity test images", done, total, ""))
        # the phantom's exact Brixia truth plays the reader the model is compared with
        metrics = evaluate_severity(pipe, test, test, readers={"phantom truth": "brixia_"}, n_boot=plan.n_boot,
                                    progress=bar)
    atomic_write_json(folder / "metrics.json", metrics)
    return {"run": run, "predictions": folder / "predict" / "predictions.csv", "overlays": folder / "predict" /
            "overlays", "metrics_file": folder / "metrics.json", "metrics": metrics,
            "n_scored": int(table["error"].isna().sum()) if "error" in table else len(table), "n_test": len(test)}


def _evaluation_step(out: Path, plan: DemoPlan, data: dict[str, Any], diagnosis: dict[str, Any]) -> dict[str, Any]:
    from cxrlab.evaluate import build_report

    folder = _fresh(out / "evaluation")
    report = build_report(diagnosis["run"], data=data["manifest"], out=folder, n_boot=plan.n_boot, seed=plan.seed,
                          per_class=plan.gallery_per_class, max_hcs_images=plan.max_hcs_images)
    return {"report": report, "metrics": folder / "metrics.json"}


def _quality_step(out: Path, plan: DemoPlan, rep: _Reporter) -> dict[str, Any]:
    from cxrlab.data.phantom import generate_phantom, render_sample
    from cxrlab.quality import QualityGate, train_quality_gate

    folder = _fresh(out / "quality")
    # its own phantom: laterals must not enter the lung, diagnosis and severity data
    manifest = generate_phantom(folder / "phantom", n_patients=max(16, plan.n_patients // 2), size=plan.size,
                                seed=plan.seed + 1, max_studies=2, lateral_prob=0.5)
    with rep.bars() as bar:
        run = train_quality_gate([manifest], folder / "run", {"size": 96, "seed": plan.seed}, progress=bar)
    gate = QualityGate.load(run)
    film = render_sample("covid19", severity=0.5, size=plan.size, seed=plan.seed + 7)["image"]
    lateral = render_sample(view="L", size=plan.size, seed=plan.seed + 8)["image"]
    examples = {name: r.to_dict() for name, r in zip(("frontal", "lateral", "inverted"),
                                                     gate.check_many([film, lateral, 1.0 - film]))}
    atomic_write_json(folder / "examples.json", examples)
    return {"run": run, "examples": examples, "examples_file": folder / "examples.json",
            "metrics": json.loads((run / "quality.json").read_text())["validation"]}


def _service_step(out: Path, lung: dict[str, Any], diagnosis: dict[str, Any],
                  severity: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
    from cxrlab.serve import write_service_config

    path = write_service_config(out / "service.yaml", lung_run=lung["run"], diagnosis_run=diagnosis["run"],
                                opacity_run=severity["run"], quality={"run": str(quality["run"])})
    return {"config": path}


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run_demo(out_dir: str | os.PathLike = "runs/demo", *, seed: int = 0, size: int = 128, fast: bool = False,
             console: Console | None = None) -> dict[str, Path]:
    """Run every demo step into ``out_dir``; returns ``{name: path}`` of the outputs (also in ``demo.json``).

    ``fast`` shrinks everything (16 patients at 64 px, one to three epochs per model) for tests; ``console``
    receives the status lines and progress bars (None: silent).
    """
    plan = DemoPlan.make(size=size, fast=fast, seed=seed)
    out = Path(out_dir)
    _prepare_out(out)
    rep = _Reporter(console, n_steps=8)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    with rep.step("data", f"phantom of {plan.n_patients} patients at {plan.size} px → import → validate → "
                          f"patient-level split → summary") as info:
        data = _data_step(out, plan, rep)
        info["note"] = (f"{data['n_images']} images of {data['n_patients']} patients, 0 errors, "
                        f"{data['n_warnings']} warning(s) → {data['manifest']}")
    seconds["data"] = info["seconds"]
    if console is not None:
        for name, table in data["tables"].items():
            console.print(_rich_table(table, name))

    with rep.step("lung model", f"U-Net / EfficientNet-Lite0 at {plan.seg_size} px, {plan.lung_epochs} epoch(s)"
                  ) as info:
        lung = _lung_step(out, plan, data, rep)
        lungs = lung["metrics"].get("test", {}).get("overall", {}).get("lungs", {})
        info["note"] = (f"test lungs Dice {_fmt(lungs.get('dice_mean'))}; {lung['n_overlays']} overlays → "
                        f"{lung['overlays']}")
    seconds["lung"] = info["seconds"]

    schedule = "its own schedule" if plan.diagnosis_epochs is None else f"{plan.diagnosis_epochs} epoch(s)"
    with rep.step("diagnosis", f"recipe {DIAGNOSIS_RECIPE}, {schedule}") as info:
        diagnosis = _diagnosis_step(out, plan, data, rep)
        test = diagnosis["metrics"].get("test", {})
        info["note"] = (f"test macro-F1 {_fmt(test.get('macro_f1'))}, accuracy {_fmt(test.get('accuracy'))} → "
                        f"{diagnosis['run']}")
    seconds["diagnosis"] = info["seconds"]

    with rep.step("similar cases", "embed every film with the diagnosis run → FAISS index → one search (top 3 "
                                   "patients with their timelines)") as info:
        similar = _similar_step(out, plan, data, diagnosis)
        hits = "; ".join(f"{h['patient_id']} {h['finding']} cos {h['similarity']:.2f}, films on days "
                         f"{', '.join(str(s['offset_days']) for s in h['series'])}" for h in similar["result"]["results"])
        info["note"] = (f"{similar['n']} films indexed; {Path(similar['result']['query']).name} → {hits} → "
                        f"{similar['search']}")
    seconds["similar"] = info["seconds"]

    with rep.step("severity", f"two-stage lungs → disease ({plan.disease_epochs} epoch(s)) → zone scores") as info:
        severity = _severity_step(out, plan, data, lung, rep)
        m = severity["metrics"]
        dice = m.get("disease", {}).get("dice_pooled")
        mae = m.get("brixia", {}).get("total", {}).get("summary", {}).get("model-reader", {}).get("mae")
        info["note"] = (f"{severity['n_scored']}/{severity['n_test']} test images scored; disease Dice "
                        f"{_fmt(dice)}, Brixia 0-18 MAE vs phantom truth {_fmt(mae, 2)} → {severity['overlays']}")
    seconds["severity"] = info["seconds"]

    with rep.step("evaluation", f"report of the diagnosis run ({plan.n_boot} patient-level bootstrap resamples, "
                                "Grad-CAM gallery)") as info:
        evaluation = _evaluation_step(out, plan, data, diagnosis)
        info["note"] = f"→ {evaluation['report']}"
    seconds["evaluation"] = info["seconds"]

    with rep.step("quality gate", "view / inversion / non-chest checks on frozen Lite0 features, phantom with "
                                  "laterals") as info:
        quality = _quality_step(out, plan, rep)
        verdicts = ", ".join(f"{k} → {v['verdict']}" for k, v in quality["examples"].items())
        info["note"] = (f"held-out view accuracy {_fmt(quality['metrics']['view']['accuracy']['value'])}; "
                        f"{verdicts} → {quality['run']}")
    seconds["quality"] = info["seconds"]

    with rep.step("service", "config for the viewer (`make serve`)") as info:
        service = _service_step(out, lung, diagnosis, severity, quality)
        info["note"] = f"→ {service['config']}"
    seconds["service"] = info["seconds"]

    outputs = {
        "data": out / "data", "manifest": data["manifest"], "split": data["split"], "stats": data["stats"],
        "lung_run": lung["run"], "lung_overlays": lung["overlays"], "diagnosis_run": diagnosis["run"],
        "similar_index": similar["index"], "similar_search": similar["search"], "severity_run": severity["run"], "severity_predictions": severity["predictions"],
        "severity_overlays": severity["overlays"], "severity_metrics": severity["metrics_file"],
        "report": evaluation["report"], "quality_run": quality["run"], "quality_examples": quality["examples_file"],
        "service_config": service["config"],
    }
    total = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / RECORD, {"plan": asdict(plan), "seconds": {**seconds, "total": total},
                                     "outputs": {k: str(v) for k, v in outputs.items()}})
    outputs["record"] = out / RECORD
    if console is not None:
        _print_summary(console, out, outputs, seconds, total)
    return outputs


def _rich_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(" / ".join(str(n) for n in df.index.names if n), style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.iterrows():
        table.add_row(str(idx), *["" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v) for v in row])
    return table


def serve_command(out: Path) -> str:
    """The one command that starts the viewer on the demo's models."""
    default = Path("runs/demo")
    same = out.resolve() == default.resolve()
    return "make serve" if same else f"make serve DEMO_OUT={out}"


def _print_summary(console: Console, out: Path, outputs: dict[str, Path], seconds: dict[str, float],
                   total: float) -> None:
    rows = [
        ("data", "phantom, manifest, split, stats", [outputs["data"], outputs["split"]]),
        ("lung", "lung model run + mask overlays", [outputs["lung_run"], outputs["lung_overlays"]]),
        ("diagnosis", f"{DIAGNOSIS_RECIPE} run", [outputs["diagnosis_run"]]),
        ("similar", "similar-case index + one search", [outputs["similar_index"], outputs["similar_search"]]),
        ("severity", "two-stage run, test scores + overlays, metrics",
         [outputs["severity_run"], outputs["severity_overlays"], outputs["severity_metrics"]]),
        ("evaluation", "evaluation report", [outputs["report"]]),
        ("quality", "image-quality gate + three example verdicts",
         [outputs["quality_run"], outputs["quality_examples"]]),
        ("service", "viewer config (with the gate)", [outputs["service_config"]]),
    ]
    table = Table(title=f"cxrlab demo outputs ({total:.0f} s)", title_justify="left")
    table.add_column("step", style="bold")
    table.add_column("what")
    table.add_column("where", overflow="fold")
    table.add_column("s", justify="right")
    for step, what, paths in rows:
        table.add_row(step, what, "\n".join(str(p) for p in paths), f"{seconds[step]:.0f}")
    console.print(table)
    console.print(f"Report: [bold]{outputs['report']}[/]")
    console.print(f"The viewer runs `cxrlab serve --config {outputs['service_config']}` on the demo's models "
                  "(research use only; Ctrl-C stops it).")
    console.print(f"Start the viewer: [bold]{serve_command(out)}[/]")
