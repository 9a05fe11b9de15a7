"""``cxrlab sequence cv``: outcome models over each patient's series of films (a thin layer over
:mod:`cxrlab.train.sequence`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cxrlab.cli._common import console

sequence_app = typer.Typer(help="Outcome prediction from a patient's series of films (CNN features -> LSTM).",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(sequence_app, name="sequence")


@sequence_app.command("cv")
def cv(recipe: str = typer.Argument(..., help="a `kind: sequence` recipe: shipped name (cs230-survival) or YAML"),
       emb: Path = typer.Argument(..., help="embeddings of the films (cxrlab embed), with patient_id, offset_days "
                                            "and the outcome columns"),
       out: Path = typer.Option(..., "--out", help="folder for metrics.json and predictions.csv"),
       set_: list[str] = typer.Option([], "--set", help="override a recipe key: key=value (repeatable)"),
       min_films: int = typer.Option(1, "--min-films", min=1, help="only patients with at least this many films"),
       n_boot: int = typer.Option(1000, "--n-boot", min=0, help="patient bootstrap resamples for the CIs"),
       report: bool = typer.Option(True, "--report/--no-report", help="also write report.html (metrics, "
                                                                       "Kaplan-Meier curves, patient timelines)"),
       timelines: int = typer.Option(3, "--timelines", min=0, help="patients shown as timelines in the report"),
       cam_method: str = typer.Option("gradcam", "--cam-method", help="heatmap of the sequence model's output on "
                                                                      "each timeline film")) -> None:
    """Patient-level k-fold CV of the LSTM and its baselines (last film, mean of films) on the same folds;
    writes metrics.json, predictions.csv and report.html."""
    from cxrlab.retrieval import read_embeddings
    from cxrlab.train.sequence import build_sequences, cross_validate_sequences, load_sequence_config
    from cxrlab.utils import atomic_path, atomic_write_json, json_safe

    config = load_sequence_config(recipe, set_)
    embeddings = read_embeddings(emb)
    seqs = [s for s in build_sequences(embeddings, config, str(emb)) if len(s.offsets) >= min_films]
    films = None
    if config.features.finetune:
        from cxrlab.train.sequence_films import film_store_for

        films = film_store_for(embeddings.info, config.features.train_blocks)
        console.print(f"fine-tuning the last {config.features.train_blocks} stage(s) of the film CNN "
                      f"({embeddings.info.get('source', {}).get('backbone')}) inside every model", highlight=False)
    n_models = config.train.folds * (1 + len(config.baselines))
    done = iter(range(1, n_models + 1))
    result = cross_validate_sequences(
        seqs, config, n_boot=n_boot, films=films,
        progress=lambda f, m: console.print(f"  [{next(done)}/{n_models}] fold {f + 1}: {m} trained", highlight=False))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.csv") as tmp:
        result["predictions"].to_csv(tmp, index=False)
    summary = {k: v for k, v in result.items() if k != "predictions"}
    atomic_write_json(out / "metrics.json", json_safe({"recipe": config.model_dump(), "embeddings": str(emb.resolve()),
                                                          "min_films": min_films, **summary}))
    console.print(f"{result['n_patients']} patients ({result['n_positive']} with the outcome), "
                  f"{config.train.folds}-fold CV, {result['metric']} (95 % patient bootstrap CI):", highlight=False)
    for name, est in result["estimates"].items():
        low = "" if est["low"] != est["low"] else f" ({est['low']:.3f}-{est['high']:.3f})"
        console.print(f"  {name:>12}  {est['value']:.3f}{low}", highlight=False)
    written = [out / "metrics.json", out / "predictions.csv"]
    if report:
        from cxrlab.evaluate.sequence_report import build_sequence_report

        written.append(build_sequence_report(out, emb=emb, n_patients=timelines, cam_method=cam_method))
    console.print(f"written: {', '.join(str(p) for p in written)}", highlight=False)
