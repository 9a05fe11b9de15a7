"""``cxrlab train``, ``cxrlab predict``, ``cxrlab recipes list|show``: a thin layer over cxrlab.train / recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console


def _kind(recipe: str | Path) -> str | None:
    """The ``kind:`` a recipe name / file declares, read without loading the model libraries (None: unreadable,
    the normal loader then reports why)."""
    from cxrlab.errors import ConfigError, InputError
    from cxrlab.recipes.loader import read_recipe_file, recipe_path

    try:
        raw = read_recipe_file(recipe_path(recipe))
    except (ConfigError, InputError):
        return None
    return raw.get("kind") if isinstance(raw, dict) else None


def register(app: typer.Typer) -> None:
    recipes_app = typer.Typer(help="Shipped training recipes.", no_args_is_help=True)

    @app.command("train")
    def train_cmd(
        recipe: str = typer.Argument(..., help="recipe name (cxrlab recipes list) or path to a YAML file"),
        data: list[Path] = typer.Option(..., "--data", help="manifest(s); the first is split by patient, later "
                                        "ones follow the recipe's data.extra (label fusion; ensemble recipes "
                                        "pool them all)"),
        out: Path = typer.Option(..., "--out", help="run directory"),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="override a recipe key: train.lr=1e-4"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
        mlflow: bool = typer.Option(False, "--mlflow", help="track the run with MLflow in a local store "
                                    "(default <out>/mlruns; needs: pip install 'cxrlab[mlflow]')"),
        mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", metavar="URI",
                                                 help="MLflow tracking store (implies --mlflow)"),
        quality: Optional[Path] = typer.Option(None, "--quality", help="quality run (cxrlab quality train): drop "
                                               "films it refuses or finds inverted before the split "
                                               "(recipe key data.quality)"),
        split: Optional[Path] = typer.Option(None, "--split", help="split.csv from `cxrlab data split` to use "
                                             "instead of the recipe's split (every image listed, patients disjoint)"),
        lung_model: Optional[Path] = typer.Option(None, "--lung-model", help="lung segmentation run: predicts the "
                                                  "lung masks of images without them, once, cached in "
                                                  "<out>/lung_masks/ (recorded in data_filter.json)"),
        mask_cache: Optional[Path] = typer.Option(None, "--mask-cache", help="folder for the predicted lung masks "
                                                  "instead of <out>/lung_masks (share one across the folds of a "
                                                  "cross-validation)"),
        reuse: Optional[Path] = typer.Option(None, "--reuse", metavar="RUN", help="ensemble recipes: take RUN's "
                                             "fold models whose learner recipe, fold split and lung run are "
                                             "identical instead of training them again"),
    ) -> None:
        """Train a recipe; writes a self-describing run directory."""
        from cxrlab.recipes import load_recipe

        if _kind(out / "recipe.yaml" if resume else recipe) == "ensemble":  # FLANNEL-style ensemble (#18)
            from cxrlab.errors import ConfigError
            from cxrlab.train.ensemble import train_ensemble

            given = (("--quality", quality), ("--split", split), ("--mlflow", mlflow or mlflow_uri))
            unsupported = [option for option, value in given if value]
            if unsupported:
                raise ConfigError(f"{', '.join(unsupported)} not supported for ensemble recipes yet (the ensemble "
                                  "makes its own patient-level folds)")

            run_dir = train_ensemble(recipe, data, out, resume=resume, overrides=list(set_ or []),
                                     lung_model=lung_model, mask_cache=mask_cache, reuse=reuse)
            console.print(f"ensemble run written to [bold]{run_dir}[/] (metrics.json, predictions.parquet)")
            return
        if reuse is not None:
            from cxrlab.errors import ConfigError

            raise ConfigError("--reuse applies to ensemble recipes (it takes identical fold models of an earlier "
                              "ensemble run); a single run continues with --resume")
        overrides = list(set_ or [])
        if mlflow or mlflow_uri:  # recipe keys, so the run directory records them (a resumed run keeps its own)
            overrides.append("tracking.mlflow=true")
        if mlflow_uri:
            overrides.append(f"tracking.uri={json.dumps(mlflow_uri)}")  # quoted: the value is read as YAML
        if quality is not None:
            overrides.append(f"data.quality={json.dumps(str(quality.resolve()))}")
        # a wrong recipe name, key or value fails here, in a second, before the model libraries load
        resolved = recipe if resume else load_recipe(recipe, overrides)
        if split is not None and resume:
            from cxrlab.errors import ConfigError

            raise ConfigError("--split with --resume: a resumed run keeps the split saved in its directory")
        split_table = None
        if split is not None:  # checked before the model libraries load: a bad split fails in a second
            from cxrlab.data.splits import load_split

            split_table = load_split(split)

        from cxrlab.train import train

        run_dir = train(resolved, data, out, resume=resume, overrides=overrides,
                        split=split if split_table is not None else None, lung_model=lung_model,
                        mask_cache=mask_cache)
        console.print(f"run written to [bold]{run_dir}[/] (metrics.json, predictions.parquet, data_filter.json)")

    @app.command("predict")
    def predict_cmd(
        run: Path = typer.Argument(..., help="a training run directory"),
        inputs: list[Path] = typer.Argument(..., help="image files, folders of images (searched recursively), or a "
                                            "manifest (csv/parquet, or a folder holding manifest.csv)"),
        out: Path = typer.Option(..., "--out", help="output table (.csv or .parquet)"),
        lung_model: Optional[Path] = typer.Option(None, "--lung-model", help="segmentation run giving lung masks "
                                                  "when the recipe's ROI needs them and the input has none"),
        quality: Optional[Path] = typer.Option(None, "--quality", help="quality run (cxrlab quality train): adds "
                                               "quality_* columns, skips refused images, corrects inverted ones"),
        keep_failing: bool = typer.Option(False, "--keep-failing", help="predict images the gate refuses too"),
    ) -> None:
        """Predict with a trained run on new images."""
        from cxrlab.data.inputs import resolve_inputs

        images = resolve_inputs(inputs)  # before the model libraries load: a wrong path fails at once

        from cxrlab.train import load_run
        from cxrlab.train.ensemble import is_ensemble_run, load_ensemble
        from cxrlab.utils import atomic_path

        model = load_ensemble(run) if is_ensemble_run(run) else load_run(run)
        table = model.predict(images, lung_model=lung_model, quality=quality, keep_failing=keep_failing)
        if model.lung_masks_report is not None:
            r = model.lung_masks_report
            console.print(f"lung masks: {r['predicted']} predicted, {r['from_cache']} from the cache "
                          f"({r['cache']}), {r['given']} given")
        with atomic_path(out) as tmp:
            if out.suffix == ".parquet":
                table.to_parquet(tmp, index=False)
            else:
                table.to_csv(tmp, index=False)
        skipped = int((table["quality_verdict"] == "refuse").sum()) if quality and not keep_failing else 0
        console.print(f"{len(table)} row(s) written to [bold]{out}[/]"
                      + (f"; {skipped} refused by the quality gate, not predicted (see quality_reasons)"
                         if skipped else ""))

    @recipes_app.command("list")
    def recipes_list() -> None:
        """Recipe names and what they do."""
        from cxrlab.recipes import list_recipes

        for name, description in list_recipes().items():
            console.print(f"[bold]{name}[/]  {description}")

    @recipes_app.command("show")
    def recipes_show(
        name: str = typer.Argument(..., help="recipe name or YAML path"),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="override a key before showing"),
    ) -> None:
        """Print the fully resolved recipe (defaults filled in, overrides applied)."""
        from cxrlab.recipes import load_recipe, recipe_yaml

        console.print(recipe_yaml(load_recipe(name, set_ or [], kind=None)), highlight=False, markup=False)

    app.add_typer(recipes_app, name="recipes")
