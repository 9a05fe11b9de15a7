"""``cxrlab data ...``: import, validate, stats, exclude, split, fuse, phantom (a thin layer over cxrlab.data)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from cxrlab.cli._common import console, progress
from cxrlab.errors import ConfigError

if TYPE_CHECKING:  # pandas loads with the command that needs it, so `cxrlab --help` stays fast
    import pandas as pd

data_app = typer.Typer(help="Datasets: import native layouts, validate, summarise, exclude, split, fuse, phantom.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _opts(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--opt {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def _table(df: pd.DataFrame, title: str, max_rows: int = 40) -> Table:
    import pandas as pd

    table = Table(title=title, title_justify="left", show_lines=False)
    index_name = " / ".join(str(n) for n in df.index.names if n) or ""
    table.add_column(index_name, style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.head(max_rows).iterrows():
        table.add_row(str(idx), *["" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else str(v)) for v in row])
    if len(df) > max_rows:
        table.caption = f"... {len(df) - max_rows} more rows"
    return table


def _validate_and_report(manifest, report: Path | None, content: bool = False) -> int:
    from cxrlab.data.validate import errors, issues_frame, validate_manifest
    from cxrlab.utils import atomic_path

    with progress() as bar:  # with --content every row is visited twice: files, then pixels
        task = bar.add_task("validating", total=len(manifest) * (2 if content else 1), status="")
        issues = validate_manifest(manifest, check_content=content, progress=lambda n: bar.advance(task, n))
    frame = issues_frame(issues)
    n_errors = len(errors(issues))
    if report is not None and len(frame):
        with atomic_path(report) as tmp:
            frame.to_csv(tmp, index=False)
    elif report is not None and report.exists():  # a clean run must not leave an old report behind
        report.unlink()
    if len(frame):
        summary = frame.groupby(["severity", "column"]).size().rename("rows").to_frame()
        console.print(_table(summary, "issues by column"))
        shown = frame.head(20).set_index("row")
        console.print(_table(shown, "first issues"))
    console.print(f"{len(manifest)} rows: [bold]{n_errors}[/] error(s), {len(frame) - n_errors} warning(s)"
                  + (f"; full list in {report}" if report is not None and len(frame) else ""))
    return n_errors


@data_app.command("import")
def import_cmd(
    fmt: str = typer.Argument(..., help="importer name (see `cxrlab data formats`)"),
    src: Path = typer.Argument(..., help="the dataset in its native layout"),
    out: Path = typer.Option(..., "--out", help="folder for manifest.csv (and converted files)"),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="importer option key=value (repeatable)"),
    parquet: bool = typer.Option(False, help="also write manifest.parquet"),
    validate: bool = typer.Option(True, help="validate the imported manifest"),
) -> None:
    """Import a dataset's native layout into DIR/manifest.csv (paths relative to DIR) and DIR/import.json."""
    from cxrlab import __version__
    from cxrlab.data.importers import import_dataset
    from cxrlab.data.manifest import save_manifest
    from cxrlab.utils import atomic_write_json

    start = time.perf_counter()
    with console.status(f"importing {fmt} from {src}"):
        manifest = import_dataset(fmt, src, out=out, **_opts(opt))
    seconds = time.perf_counter() - start
    path = save_manifest(manifest, out / "manifest.csv")
    if parquet:
        save_manifest(manifest, out / "manifest.parquet")
    atomic_write_json(out / "import.json", {"format": fmt, "src": str(src.resolve()), "options": _opts(opt),
                                            "images": len(manifest), "seconds": round(seconds, 3),
                                            "notes": manifest.attrs.get("notes", []), "cxrlab": __version__})
    for note in manifest.attrs.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"[green]imported[/] {len(manifest)} images of {manifest.df['patient_id'].nunique()} patients "
                  f"in {seconds:.2f} s -> {path}")
    if validate and _validate_and_report(manifest, out / "validation.csv"):
        raise typer.Exit(1)


@data_app.command("formats")
def formats_cmd() -> None:
    """List the importers."""
    from cxrlab.data.importers import IMPORTERS, list_importers

    table = Table("format", "description")
    for name in list_importers():
        table.add_row(name, IMPORTERS.meta(name).get("description", ""))
    console.print(table)


@data_app.command("validate")
def validate_cmd(
    manifest: Path = typer.Argument(..., help="manifest.csv/.parquet or its folder"),
    report: Optional[Path] = typer.Option(None, help="write every issue to this CSV"),
    content: bool = typer.Option(False, "--content", help="also decode every image and report the same pixels "
                                 "under two paths (an error across patients: split leakage)"),
) -> None:
    """Report every bad row (file, column, reason); exit 1 if there are errors."""
    from cxrlab.data.manifest import load_manifest

    if _validate_and_report(load_manifest(manifest), report, content):
        raise typer.Exit(1)


@data_app.command("stats")
def stats_cmd(
    manifest: Path = typer.Argument(..., help="manifest.csv/.parquet or its folder"),
    split: Optional[Path] = typer.Option(None, help="split.csv to count classes per split"),
    label: str = typer.Option("finding", help="label column to count"),
) -> None:
    """Class counts per source (and split), images per patient, views, ages."""
    from cxrlab.data.manifest import load_manifest
    from cxrlab.data.stats import summarise

    m = load_manifest(manifest)
    parts = None
    if split is not None:  # splits imports scikit-learn (seconds): only when a split is asked for
        from cxrlab.data.splits import join_split, load_split

        parts = join_split(m.df, load_split(split))
    for title, table in summarise(m.df, label=label, split=parts).items():
        console.print(_table(table, title))


@data_app.command("exclude")
def exclude_cmd(
    manifest: Path = typer.Argument(..., help="manifest.csv/.parquet or its folder"),
    out: Path = typer.Option(..., "--out", help="folder for the kept manifest.csv and exclusions.csv"),
    first_per_accession: bool = typer.Option(True, help="keep only the first image per accession"),
    accession_column: str = typer.Option("accession"),
    min_age: Optional[float] = typer.Option(18.0, help="exclude younger patients (negative: off)"),
    drop_unknown_age: bool = typer.Option(False),
    radiographs_only: bool = typer.Option(True, help="exclude non-radiograph modalities"),
    frontal_only: bool = typer.Option(True, help="exclude lateral views"),
    drop_unreadable: bool = typer.Option(True, help="read every image; exclude those that fail"),
    drop_documents: bool = typer.Option(True, help="exclude scanned pages / documents"),
    flag_inverted: bool = typer.Option(True, help="flag images that look inverted"),
    drop_inverted: bool = typer.Option(False, help="exclude them instead of flagging"),
    quality: Optional[Path] = typer.Option(None, "--quality", help="quality run (cxrlab quality train): exclude "
                                           "films it refuses, flag inverted ones, add quality_* columns"),
) -> None:
    """Apply the exclusion criteria; every excluded (or flagged) row goes to exclusions.csv with its reason."""
    from cxrlab.data.exclusions import ExclusionConfig, apply_exclusions
    from cxrlab.data.manifest import load_manifest, save_manifest
    from cxrlab.utils import atomic_path, atomic_write_json

    m = load_manifest(manifest)
    config = ExclusionConfig(first_per_accession=first_per_accession, accession_column=accession_column,
                             min_age=min_age if min_age is not None and min_age >= 0 else None,
                             drop_unknown_age=drop_unknown_age, radiographs_only=radiographs_only,
                             frontal_only=frontal_only, drop_unreadable=drop_unreadable,
                             drop_documents=drop_documents, flag_inverted=flag_inverted, drop_inverted=drop_inverted,
                             quality_run=str(quality) if quality is not None else None)
    with progress() as bar:
        task = bar.add_task("checking images", total=len(m), status="")
        result = apply_exclusions(m, config, progress=lambda n: bar.advance(task, n))
    save_manifest(result.kept, out / "manifest.csv")
    with atomic_path(out / "exclusions.csv") as tmp:
        result.report.to_csv(tmp, index=False)
    atomic_write_json(out / "exclusions.json", config.to_dict())
    for note in result.skipped:
        console.print(f"[yellow]not applied[/] {note}")
    if len(result.report):
        console.print(_table(result.counts().rename("rows").to_frame(), "exclusions"))
    console.print(f"kept {len(result.kept)} of {len(m)} rows -> {out / 'manifest.csv'}; "
                  f"report {out / 'exclusions.csv'}")


@data_app.command("split")
def split_cmd(
    manifest: Path = typer.Argument(..., help="manifest.csv/.parquet or its folder"),
    out: Path = typer.Option(..., "--out", help="split.csv to write (folds.csv with --kfold)"),
    ratios: str = typer.Option("0.7,0.15,0.15", help="train,val,test (or train,test)"),
    seed: int = typer.Option(0),
    stratify: Optional[str] = typer.Option("finding", help="patient-level label to stratify on ('' = none)"),
    kfold: int = typer.Option(0, help="k > 1: stratified group k-folds instead of a ratio split"),
    join_same_films: bool = typer.Option(False, "--join-same-films",
                                         help="decode every film; patients who share one (the same pixels under "
                                         "two patient ids, see validate --content) land in the same part"),
) -> None:
    """Patient-level split (fused train-only rows always in train); deterministic by seed."""
    from cxrlab.data.fusion import kfold_fused, split_fused
    from cxrlab.data.manifest import load_manifest
    from cxrlab.data.splits import save_split
    from cxrlab.data.stats import class_counts
    from cxrlab.utils import atomic_path

    df = load_manifest(manifest).df
    strat = stratify or None
    if strat is not None and strat not in df.columns:
        raise ConfigError(f"--stratify {strat!r}: no such column in {manifest}")
    units = df  # what is split: patients, or patients joined by a shared film
    if join_same_films:
        from cxrlab.data.splits import film_digests, join_patients_by_film

        from cxrlab.data import schema

        with progress() as bar:
            task = bar.add_task("hashing films", total=len(df), status="")
            digests = film_digests(df, on_item=lambda i, n: bar.update(task, completed=i))
        joined = join_patients_by_film(df, digests)
        n_joined = int((joined != df[schema.PATIENT_ID].astype(str)).groupby(joined).any().sum())
        console.print(f"{n_joined} group(s) of patients share a film and are split together")
        units = df.assign(**{schema.PATIENT_ID: joined.to_numpy()})
    if kfold > 1:
        folds = kfold_fused(units, k=kfold, seed=seed, stratify=strat)
        with atomic_path(out) as tmp:
            df[["image", "patient_id"]].assign(fold=folds.to_numpy()).to_csv(tmp, index=False)
        console.print(_table(class_counts(df.assign(fold=folds.astype(str)), strat or "source_dataset", "fold"),
                             f"{kfold} folds"))
    else:
        try:
            parts_ratio = [float(r) for r in ratios.split(",")]
        except ValueError:
            raise ConfigError(f"--ratios {ratios!r}: expected numbers like 0.7,0.15,0.15") from None
        parts = split_fused(units, ratios=parts_ratio, seed=seed, stratify=strat)
        left_out = parts.isna()
        df, parts = df[~left_out], parts[~left_out]
        save_split(df.assign(split=parts.to_numpy()), out)
        console.print(_table(class_counts(df.assign(split=parts.to_numpy()), strat or "source_dataset", "split"),
                             "split"))
        if left_out.any():
            console.print(f"left out {int(left_out.sum())} fused (train-only) image(s) of patients whose primary "
                          "images are in val/test")
    console.print(f"wrote {out}")


@data_app.command("fuse")
def fuse_cmd(
    primary: Path = typer.Argument(..., help="primary manifest (its labels are kept)"),
    add: list[Path] = typer.Option(..., "--add", help="secondary manifest (repeatable)"),
    label_map: list[str] = typer.Option(..., "--map", help="one per --add: preset (ricord_icu) or "
                                                           "source:target:value=label,..."),
    out: Path = typer.Option(..., "--out", help="folder for the fused manifest.csv"),
    train_only: bool = typer.Option(True, help="fused rows may only enter training"),
) -> None:
    """Merge manifests, mapping secondary labels onto the primary one."""
    from cxrlab.data.fusion import fuse_manifests, parse_label_map
    from cxrlab.data.manifest import load_manifest, save_manifest
    from cxrlab.utils import atomic_path

    if len(add) != len(label_map):
        raise ConfigError(f"give one --map per --add ({len(add)} --add, {len(label_map)} --map)")
    result = fuse_manifests(load_manifest(primary), [(load_manifest(p), parse_label_map(s))
                                                     for p, s in zip(add, label_map)], train_only=train_only)
    save_manifest(result.manifest, out / "manifest.csv")
    if len(result.report):
        with atomic_path(out / "fusion_dropped.csv") as tmp:
            result.report.to_csv(tmp, index=False)
    df = result.manifest.df
    console.print(_table(df.groupby(["source_dataset", "train_only"]).size().rename("images").to_frame(), "fused"))
    console.print(f"wrote {out / 'manifest.csv'} ({len(result.report)} unmapped rows dropped)")


@data_app.command("phantom")
def phantom_cmd(
    out: Path = typer.Argument(..., help="folder to create (cxrlab manifest format)"),
    n_patients: int = typer.Option(60, help="patients (1-6 studies each)"),
    size: int = typer.Option(256, help="image side in pixels"),
    seed: int = typer.Option(0),
    jobs: int = typer.Option(1, help="worker processes"),
) -> None:
    """Generate synthetic chest radiographs with known truth (lungs, disease, grades, ICU, survival)."""
    from cxrlab.data.phantom import generate_phantom

    with progress() as bar:
        task = bar.add_task("phantom patients", total=n_patients, status="")
        path = generate_phantom(out, n_patients=n_patients, size=size, seed=seed, n_jobs=jobs,
                                on_patient=lambda done, total: bar.update(task, completed=done))
    import pandas as pd

    console.print(f"wrote {path} ({len(pd.read_csv(path))} images)")
    console.print(json.dumps({"manifest": str(path), "seed": seed, "size": size, "n_patients": n_patients}))
