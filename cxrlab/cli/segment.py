"""``cxrlab segment train|predict|evaluate``: a thin layer over :mod:`cxrlab.anatomy`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console, progress, stage_callback
from cxrlab.errors import InputError

segment_app = typer.Typer(help="Lung segmentation: train a model, predict masks + overlays, evaluate.",
                          no_args_is_help=True)

def register(app: typer.Typer) -> None:
    app.add_typer(segment_app, name="segment")


@segment_app.command("train")
def train(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML segmentation config"),
          set_: list[str] = typer.Option([], "--set", help="override a config key: key=value (repeatable)"),
          out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: the config's 'out')"),
          resume: bool = typer.Option(False, "--resume", help="continue from checkpoints/last.pt")) -> None:
    """Train a segmentation model from a YAML config; writes a self-describing run directory."""
    from cxrlab.anatomy import load_config, train_segmentation

    cfg = load_config(config, set_)
    with progress() as bar:
        run = train_segmentation(cfg, out=out, resume=resume, progress=stage_callback(bar))
    metrics = json.loads((run / "metrics.json").read_text())
    console.print(f"run directory: [bold]{run}[/]  best val Dice {metrics['best_val_dice']:.4f}")


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        out.append(p.stem if n == 0 else f"{p.stem}__{n}")
    return out


@segment_app.command("predict")
def predict(inputs: list[Path] = typer.Argument(..., help="image files, folders of images (searched recursively), "
                                                "or a manifest (csv/parquet, or a folder holding manifest.csv)"),
            run: Path = typer.Option(..., "--run", "--lung-model", help="segmentation run directory"),
            out: Path = typer.Option(..., "--out", help="output folder"),
            batch_size: int = typer.Option(16, "--batch-size"),
            overlays: bool = typer.Option(True, "--overlays/--no-overlays"),
            convention: Optional[str] = typer.Option(
                None, "--convention", help="draw lungs as one annotation convention of the run's lung_conventions "
                "does, or 'shared' (the channels trained on every source); default: the run's default_output.json "
                "(the output chosen on held-out sources), else 'shared'"),
            quality: Optional[Path] = typer.Option(None, "--quality", help="quality run (cxrlab quality train): "
                                                   "adds quality_* columns, skips refused images (lateral, not a "
                                                   "chest film), corrects inverted ones"),
            keep_failing: bool = typer.Option(False, "--keep-failing", help="segment images the gate refuses too")
            ) -> None:
    """Predict masks (PNG 0/255) and overlays; writes ``manifest.csv`` with mask columns and biomarkers."""
    from cxrlab.data import Manifest, save_manifest, schema
    from cxrlab.data.inputs import resolve_inputs

    resolved = resolve_inputs(inputs)  # before the model libraries load: a wrong path fails at once
    images = [Path(p) for p in resolved.df[schema.IMAGE]]

    import pandas as pd

    from cxrlab.anatomy import LungSegmenter, lung_biomarkers
    from cxrlab.anatomy.default_output import RUN_DEFAULT
    from cxrlab.anatomy.overlay import mask_overlay
    from cxrlab.data.dataset import mask_key
    from cxrlab.io import read_image, write_png

    seg = LungSegmenter.from_run(run, convention=convention or RUN_DEFAULT)
    checks = None
    if quality is not None:
        from cxrlab.quality.batch import as_gate, check_frame, inverted_rows

        checks = check_frame(as_gate(quality), resolved.df.reset_index(drop=True), batch_size)
        checks.index = [str(Path(p).resolve()) for p in resolved.df[schema.IMAGE]]
        inverted = inverted_rows(checks)
        if not keep_failing:
            images = [p for p in images if checks.at[str(p.resolve()), "quality_verdict"] != "refuse"]
    stems = _unique_stems(images)
    key_to_col = {mask_key(c): c for c in schema.MASK_COLUMNS}
    rows = []
    with progress() as bar:
        task = bar.add_task("segmenting", total=len(images), status="")
        for start in range(0, len(images), batch_size):
            chunk = list(range(start, min(start + batch_size, len(images))))
            arrays = [read_image(images[i])[0] for i in chunk]
            if checks is not None:  # films the gate found inverted are segmented the right way up
                arrays = [1.0 - a if inverted[str(images[i].resolve())] else a
                          for i, a in zip(chunk, arrays)]
            for i, image, masks in zip(chunk, arrays, seg.predict_batch(arrays, batch_size=batch_size)):
                row = {"image": str(images[i].resolve())}
                for key, m in masks.items():
                    path = out / "masks" / key.removesuffix("_mask") / f"{stems[i]}.png"
                    write_png(path, m, mask=True)
                    row[key_to_col.get(key, f"mask_{key.removesuffix('_mask')}")] = str(path.resolve())
                if overlays:
                    write_png(out / "overlays" / f"{stems[i]}.png", mask_overlay(image, masks))
                if seg.config.is_lung_model:
                    bio = lung_biomarkers(image, masks[schema.KEY_RIGHT_MASK], masks[schema.KEY_LEFT_MASK],
                                          masks.get(schema.KEY_HEART_MASK))
                    bio["flags"] = ";".join(bio["flags"])
                    row.update({f"bio_{k}": v for k, v in bio.items()})
                rows.append(row)
            bar.update(task, completed=chunk[-1] + 1)
    pred = pd.DataFrame(rows, columns=["image"]) if not rows else pd.DataFrame(rows)
    if checks is not None:
        pred = pred.merge(checks.rename_axis("image").reset_index(), on="image", how="right")
    base = resolved.df.drop(columns=[c for c in pred.columns if c != "image" and c in resolved.df.columns])
    base = base.assign(image=[str(Path(p).resolve()) for p in base["image"]])
    table = base.merge(pred.drop_duplicates("image"), on="image", how="left")
    # images given directly: the file name stands in for the patient (the manifest needs one)
    for col, fill in ((schema.PATIENT_ID, [Path(p).stem for p in table["image"]]),
                      (schema.SOURCE_DATASET, ["predicted"] * len(table))):
        given = table[col] if col in table.columns else pd.Series([None] * len(table), dtype=object)
        table[col] = given.where(given.notna(), pd.Series(fill, index=table.index, dtype=object))
    save_manifest(Manifest(table), out / "manifest.csv")
    flagged = int((pred.get("bio_plausible", pd.Series(dtype=bool)) == False).sum())  # noqa: E712
    refused = len(resolved.df) - len(images)
    console.print(f"wrote masks for {len(images)} image(s) to {out}"
                  + (f"; {flagged} flagged implausible (see bio_flags)" if flagged else "")
                  + (f"; {refused} refused by the quality gate, not segmented (see quality_reasons)"
                     if refused else ""))


@segment_app.command("evaluate")
def evaluate(run: Path = typer.Option(..., "--run", help="segmentation run directory"),
             manifest: Optional[Path] = typer.Option(None, "--manifest",
                                                     help="evaluate on these rows (default: the run's test split)"),
             split: str = typer.Option("test", "--split", help="part of the run's split.csv to use"),
             column_map: list[str] = typer.Option([], "--map", help="rename a mask column: old=new"),
             convention: str = typer.Option("source", "--convention",
                                            help="lung channels scored: 'source' (each source's own convention), "
                                            "'shared', or a convention name"),
             out: Optional[Path] = typer.Option(None, "--out", help="metrics JSON (and a per-image parquet)")) -> None:
    """Dice, Jaccard and HD95 per structure and per source."""
    from cxrlab.anatomy import LungSegmenter, evaluate_segmenter
    from cxrlab.anatomy.data import assign_split, load_table
    from cxrlab.anatomy.config import load_config
    from cxrlab.utils import atomic_path, atomic_write_json

    seg = LungSegmenter.from_run(run)
    mapping = dict(item.split("=", 1) for item in column_map if "=" in item)
    if manifest is not None:
        cfg = load_config(seg.config, [f"manifests=[{manifest}]"])
        cfg = cfg.model_copy(update={"column_map": {**cfg.column_map, **mapping}, "sources": None})
        df = load_table(cfg)
    else:
        cfg = seg.config.model_copy(update={"split": seg.config.split.model_copy(
            update={"split_csv": str(run / "split.csv")})})
        df = assign_split(load_table(cfg), cfg)
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise InputError(run / "split.csv", f"no images in split {split!r}")
    with progress() as bar:
        task = bar.add_task("evaluating", total=len(df), status="")
        table, summary = evaluate_segmenter(seg, df, convention=None if convention == "shared" else convention,
                                            on_item=lambda i, n: bar.update(task, completed=i))
    for source, s in {"overall": summary["overall"], **summary["by_source"]}.items():
        parts = [f"{k} Dice {v['dice_mean']:.4f} HD95 {v['hd95_px256_mean']:.1f}" for k, v in s.items()
                 if isinstance(v, dict)]
        console.print(f"[bold]{source}[/] (n={s['n_images']}): " + "; ".join(parts))
    if out is not None:
        atomic_write_json(out, summary)
        with atomic_path(out.with_suffix(".parquet")) as tmp:
            table.to_parquet(tmp, index=False)
