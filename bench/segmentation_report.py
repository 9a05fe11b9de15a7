"""Write ``docs/benchmarks/anatomy.md`` from a lung run directory and ``bench/results/segmentation_*.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

TARGETS = {"JSRT": 0.96, "COVID-QU-Ex": 0.96, "ieee8023": 0.92}
STRUCTURES = ("lungs", "right_lung", "left_lung", "heart")


def _target(source: str) -> str:
    for prefix, t in TARGETS.items():
        if source.startswith(prefix):
            return f"≥ {t:.2f}"
    return ""


def _rows(summary: dict) -> list[str]:
    lines = []
    for source, s in {**summary["by_source"], "all sources": summary["overall"]}.items():
        for struct in STRUCTURES:
            if struct not in s or not s[struct]['n']:  # e.g. no heart masks in this source
                continue
            v = s[struct]
            target = _target(source) if struct == "lungs" else ""
            lines.append(f"| {source[:40]} | {struct} | {v['n']} | {v['dice_mean']:.4f} | {v['dice_median']:.4f} | "
                         f"{v['jaccard_mean']:.4f} | {v['hd95_px256_mean']:.2f} | {target} |")
    return lines


def _lung_dice(summary: dict, prefix: str) -> float | None:
    for source, s in summary["by_source"].items():
        if source.startswith(prefix) and "lungs" in s:
            return s["lungs"]["dice_mean"]
    return None


def _verdict(summary: dict, heart_line: bool = True, heart_removed: bool = True) -> list[str]:
    """One line per target: met or not, from the numbers (no hand-written claims)."""
    out = []
    for prefix, target in TARGETS.items():
        d = _lung_dice(summary, prefix)
        if d is not None:
            out.append(f"- {prefix}: mean lung Dice {d:.4f} against ≥ {target:.2f}: "
                       f"{'**met**' if d >= target else '**not met**'}.")
    heart = summary["overall"].get("heart")
    if heart and heart_line:
        out.append(f"- Heart (JSRT/SCR only): Dice {heart['dice_mean']:.4f}." + (
            " SCR-convention scoring of JSRT removes the predicted heart from the predicted lungs, so JSRT left-lung "
            "Dice depends on it." if heart_removed else " JSRT lungs are scored with the SCR convention's own lung "
            "channels, which learned SCR's lungs without the retrocardiac part."))
    return out + [""] if out else []


SHORT = {"JSRT": "JSRT/SCR", "COVID-QU-Ex": "COVID-QU-Ex", "ieee8023": "V7 ieee8023"}


def _cells(values) -> str:
    """Table cells of Dice values; "–" where a source has none."""
    return " | ".join("–" if v is None else f"{v:.4f}" for v in values)


def _result(results: Path, name: str) -> dict | None:
    """A ``bench/results`` JSON written by one of the bench commands, or None before it has run."""
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def _cross_section(results: Path, main: dict, shared: dict | None = None) -> list[str]:
    """Train-source × test-source matrix of mean lung Dice, then the full table of each cross run."""
    crosses = [json.loads(p.read_text()) for p in sorted(results.glob("segmentation_cross_*.json"))]
    if not crosses:
        return []
    cols = list(SHORT)
    lines = ["## Cross-source (train on one source, test on each source's held-out part)", "",
             "Mean lung Dice, each source scored in its own convention (rows: training data; the diagonal is "
             "within-source). The single-source runs reuse the main run's patient-level split, so every test part "
             "is the same as above and no test patient is trained on. They keep the architecture they were first "
             "run with (`CROSS_BUDGET` in the script: last decoder stage 8 wide, no convention channels).", "",
             "| trained on | " + " | ".join(SHORT[c] for c in cols) + " | budget |",
             "|---|" + "---|" * (len(cols) + 1)]
    for cross in crosses:
        cells = [_lung_dice(cross["test"], c) for c in cols]
        budget = (f"{cross.get('epochs', '?')} ep × {cross.get('samples_per_epoch', '?')} img, "
                  f"{cross.get('train_minutes', float('nan')):.1f} min, {cross.get('n_train_images', '?')} train images")
        lines.append(f"| {cross['train_source']} | " + _cells(cells)
                     + f" | {budget} |")
    main_cells = [_lung_dice(main, c) for c in cols]
    label = "all three, each source's own channels (main run)" if shared else "all three (main run above)"
    lines.append(f"| {label} | " + _cells(main_cells) + " | main run |")
    if shared:
        cells_ = [_lung_dice(shared, c) for c in cols]
        lines.append("| all three, shared channels (main run) | "
                     + _cells(cells_) + " | main run |")
    lines.append("")
    own = {"jsrt_scr": "JSRT", "covid_qu_ex": "COVID-QU-Ex", "v7_ieee8023": "ieee8023"}
    notes = []
    for cross in crosses:
        prefix = own.get(cross["train_source"])
        alone, pooled = _lung_dice(cross["test"], prefix) if prefix else None, _lung_dice(main, prefix) if prefix else None
        if alone is not None and pooled is not None:
            notes.append(f"{SHORT[prefix]} {alone:.4f} alone vs {pooled:.4f} pooled ({alone - pooled:+.4f})")
    if notes:
        lines += ["Within-source Dice of each single-source run against the pooled model on the same test part: "
                  + "; ".join(notes) + ". Where a source's own short run beats the pooled model and the other "
                  "sources' runs score far lower on it, this suggests the sources' annotation conventions disagree (where the "
                  "lung ends at the diaphragm, behind the heart, at the apex) and one set of lung channels cannot "
                  "follow all of them.", ""]
    for cross in crosses:
        lines += [f"<details><summary>Trained on <code>{cross['train_source']}</code> only: every structure</summary>",
                  "", HEADER, RULE, *_rows(cross["test"]), "", f"Machine: `{cross['machine']}`", "", "</details>", ""]
    return lines


def _resolution_lines(results: Path, size: int) -> list[str]:
    res = _result(results, "segmentation_resolution.json")
    if res is None:
        return []
    at = {src: d.get(str(size)) for src, d in res["dice_by_size"].items()}
    if any(v is None for v in at.values()):
        return []
    return [f"- Why {size} px: truth lung masks letterboxed down to {size} px and back still score Dice "
            f"{min(at.values()):.4f}–{max(at.values()):.4f} against themselves ({res['images_per_source']} images per "
            "source, `python bench/segmentation.py resolution`), so the input size is not what limits accuracy."]


def _stage_line(label: str, recipe: dict, history: pd.DataFrame) -> str:
    draw = ("source shares " + ", ".join(f"`{k}` {v}" for k, v in recipe["source_weights"].items())
            if recipe.get("source_weights") else "equal source shares")
    start = f" starting from `{recipe['init_from']}`" if recipe.get("init_from") else ""
    rate = history["train_images_per_s"]
    return (f"- {label}{start}: {len(history)} epochs × {recipe['samples_per_epoch']} images drawn per epoch "
            f"({draw}), batch {recipe['batch_size']}, AdamW lr {recipe['lr']} cosine to 2 %, Dice + BCE, "
            f"{history['precision'].iloc[-1]}, early stopping patience {recipe['patience']}; "
            f"{history['epoch_seconds'].sum() / 60:.1f} min, {rate.median():.1f} img/s median "
            f"(range {rate.min():.1f}–{rate.max():.1f}, following the machine's load; see its `history.csv`); "
            f"best val score {history['val_dice'].max():.4f} at epoch {int(history['val_dice'].idxmax()) + 1} "
            f"({_selection_words(recipe)}).")


def _selection_words(recipe: dict) -> str:
    if recipe.get("selection", "pooled") == "source_macro":
        return ("checkpoint chosen by the source-macro val lung Dice, each source in its own convention, on a val "
                "sample balanced over sources")
    return "checkpoint chosen by the val lung Dice pooled over images (this run predates source-macro selection)"


def _budget_lines(run: Path, recipe: dict, history: pd.DataFrame, metrics: dict) -> list[str]:
    lines = []
    base = Path(recipe["init_from"]) if recipe.get("init_from") else None
    if base is not None and not base.is_absolute():
        base = run.parent.parent / base if not base.exists() else base
    if base is not None and (base / "history.csv").exists():
        base_recipe = yaml.safe_load((base / "recipe.yaml").read_text())
        lines.append(_stage_line(f"Stage 1 (`{base}`, `bench/segmentation.py train`)", base_recipe,
                                 pd.read_csv(base / "history.csv")))
        label = f"Stage 2 (`{run}`, `bench/segmentation.py finetune`)"
    else:
        label = f"Training (`{run}`)"
    lines.append(_stage_line(label, recipe, history))
    lines.append(f"- Images per split: {metrics['n_images']} (the same patient-level split in every stage; the "
                 "test part is never trained on nor used for model selection, which uses the val part).")
    return lines


def _selection_section(results: Path, run: Path) -> list[str]:
    sel = _result(results, "segmentation_selection.json")
    if sel is None:
        return []
    cols = list(SHORT)

    def cells(d: dict) -> str:
        vals = [next((v for k, v in d.items() if k.startswith(c)), None) for c in cols]
        return _cells(vals)

    lines = ["## Model selection (validation parts only)", "",
             f"Candidates were compared by {sel['criterion']} (`python bench/segmentation.py select --runs "
             + " ".join(c["run"] for c in sel["candidates"]) + "`); the chosen run is the one above. Test figures "
             "are shown for transparency and were not used to choose.", "",
             "| run | val " + " | val ".join(SHORT[c] for c in cols) + " | val macro | test "
             + " | test ".join(SHORT[c] for c in cols) + " | chosen |",
             "|---|" + "---|" * (2 * len(cols) + 2)]
    recipes = []
    for c in sel["candidates"]:
        rp = Path(c["run"]) / "recipe.yaml"
        if rp.exists():
            r = yaml.safe_load(rp.read_text())
            recipes.append(f"`{c['run']}`: " + (f"from `{r['init_from']}`, " if r.get("init_from") else "from ImageNet, ")
                           + f"decoder {r['arch_kwargs'].get('decoder_channels')}, "
                           + ("convention channels " + "/".join(r["lung_conventions"]) + ", "
                              if r.get("lung_conventions") else "no convention channels, ")
                           + f"lr {r['lr']}, {r['epochs']} epochs planned × {r['samples_per_epoch']}, source shares "
                           + (str(r["source_weights"]) if r.get("source_weights") else "equal"))
    for c in sel["candidates"]:
        lines.append(f"| `{c['run']}` ({c['epochs']} epochs) | {cells(c['val'])} | {c['val_macro']:.4f} | "
                     f"{cells(c['test'])} | {'**yes**' if c['run'] == sel['chosen'] else ''} |")
        if "val_shared" in c:
            macro = sum(c["val_shared"].values()) / len(c["val_shared"])
            lines.append(f"| ↳ same run, shared lung channels (not used to choose) | {cells(c['val_shared'])} | "
                         f"{macro:.4f} | {cells(c['test_shared'])} | |")
    lines += ["", "Candidates (each run's `recipe.yaml` holds its full config): " + "; ".join(recipes) + "."]
    if any(r.startswith(f"`{c['run']}`") and "no convention channels" in r for c in sel["candidates"] for r in recipes):
        lines += ["", "Runs without convention channels were trained by the code before them (commit `746b267`: "
                  "checkpoints chosen by pooled val Dice on a random val sample); to re-train them, check out that "
                  "commit and run `python bench/segmentation.py train --out runs/lung_bench_v2`, then `finetune` "
                  "with `--set init_from=runs/lung_bench_v2` and the overrides that give its `recipe.yaml` (for "
                  "`ft2`: `--set lr=0.0002 --set epochs=12 --set patience=12 --set source_weights=null`)."]
    default = sel.get("default_output")
    if default:
        lines += ["", "**Output for films of unknown convention** (the chosen run's val parts, every source scored "
                  "with each output; same command):", "",
                  "| output | val " + " | val ".join(SHORT[c] for c in cols) + " | val macro |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for name, d in default["val_lung_dice"].items():
            lines.append(f"| `{name}` | {cells(d)} | {default['val_macro'][name]:.4f} |")
        lines += ["", f"`{default['best']}` scores best over all sources, so it is what "
                  "`LungSegmenter.from_run(run)` returns unless a convention is named"
                  + ("." if default["best"] == "shared" else
                     " — **but the library default is the shared channels: change it or name the convention**.")]
    if Path(sel["chosen"]) != run:
        lines.append(f"\n**Note:** this page describes `{run}`, not the chosen `{sel['chosen']}`.")
    return lines + [""]


def _convention_intro(recipe: dict) -> list[str]:
    conv = recipe.get("lung_conventions") or {}
    if not conv:
        return []
    names = "; ".join(f"`{k}` ← {', '.join(f'`{p}`' for p in v)}" for k, v in conv.items())
    return ["Each source is scored in its own annotation convention, with its own lung channels "
            f"(`lung_conventions`: {names}; `cxrlab segment evaluate --convention source`, the default). The "
            "shared channels, which every source trains, are scored below.", ""]


HEADER = "| source | structure | n | Dice mean | Dice median | Jaccard mean | HD95 (px @256) mean | target (lungs) |"
RULE = "|---|---|---|---|---|---|---|---|"


def write_report(run: Path, results: Path, out: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    history = pd.read_csv(run / "history.csv")
    log = run.parent / f"{run.name}.log"
    first_log = log.read_text().splitlines()[0] if log.exists() else ""
    lines = [
        "# Lung anatomy benchmark",
        "",
        "Produced by `bench/segmentation.py` (re-run: `python bench/segmentation.py resolution`, `... train`, the candidate "
        "fine-tunes listed under model selection (`... finetune --out <run> [--set ...]`), `... select --runs ...`, "
        "`... cross --train-source <src> --out runs/<name>` for each source, `... speed`, then `... report`). "
        "Data: `../shared/data` "
        "(JSRT/SCR, the V7 masks of ieee8023, COVID-QU-Ex lungs). Split: patient-level, stratified by source "
        f"(train/val/test {1 - recipe['split']['val_fraction'] - recipe['split']['test_fraction']:.2f}/"
        f"{recipe['split']['val_fraction']:.2f}/{recipe['split']['test_fraction']:.2f}, seed {recipe['split']['seed']}).",
        "",
        f"Machine and load at the start of training: `{first_log[11:]}`",
        "",
        "## Model and training budget",
        "",
        f"- `{recipe['arch']}` + `{recipe['encoder']}` ({recipe['weights']} weights), arch kwargs "
        f"`{recipe['arch_kwargs']}`, input {recipe['size']} px letterboxed, targets {recipe['targets']}.",
        *_budget_lines(run, recipe, history, metrics),
        *_resolution_lines(results, recipe["size"]),
        "",
        "## Held-out accuracy (test part of each source, evaluated at each image's own resolution)",
        "",
        *_convention_intro(recipe),
        HEADER, RULE, *_rows(metrics["test"]),
        "",
    ]
    lines += _verdict(metrics["test"], heart_removed=not recipe.get("lung_conventions"))
    if "test_shared" in metrics:
        lines += ["### Shared lung channels (the default output, for films whose convention is unknown)", "",
                  "The same test parts, every source scored with the shared lung channels (trained on all "
                  "sources; for JSRT/SCR the predicted heart is removed from the predicted lungs). This is what "
                  "`LungSegmenter.from_run(run)` and `cxrlab segment predict` return by default.", "",
                  HEADER, RULE, *_rows(metrics["test_shared"]), "", *_verdict(metrics["test_shared"], False)]
    lines += _selection_section(results, run)
    lines += _cross_section(results, metrics["test"], metrics.get("test_shared"))
    sp = _result(results, "segmentation_speed.json")
    if sp is not None:
        lines += [
            "## Speed",
            "",
            f"Measured {sp['machine']['date_utc']} UTC on `{sp['machine']['cpu']}`, {sp['machine']['cores']} cores, "
            f"load `{sp['machine']['uptime']}`.",
            "",
            f"- GEMM peak measured in the same run: fp32 {sp['gemm_peak_gflops']['fp32']:.1f} GFLOP/s, "
            f"bf16 {sp['gemm_peak_gflops']['bf16']:.1f} GFLOP/s.",
            f"- End-to-end segmentation (read 256-px PNG, letterbox, infer at {sp['model_input_px']} px, "
            f"post-process, write 2 mask PNGs), batch {sp['batch']}, {sp['precision']}: "
            f"**{sp['end_to_end_images_per_s']:.1f} img/s** over {sp['images']} images (target ≥ 60); model "
            f"forward {sp['model_forward_gflop_per_image']:.3f} GFLOP/image → "
            f"{100 * sp['inference_fraction_of_peak']:.1f} % of the {sp['precision']} GEMM peak.",
            f"- Training (median img/s over the epochs of `{sp.get('train_rate_from_run', str(run))}`): "
            f"{sp['train_images_per_s_median']:.2f} img/s → a full epoch over the "
            f"{sp['train_images_full_epoch']} training images would take "
            f"**{sp['full_epoch_minutes_estimated']:.1f} min** (target < 2 min); "
            f"{100 * sp['train_fraction_of_peak']:.1f} % of peak (forward + backward ≈ 3 × forward FLOPs).",
            (f"- Training speed is the median over the epochs of `{sp['train_rate_from_run']}`"
             + (" (this run itself: the median over its epochs, whose range above follows the machine's load)" if Path(sp["train_rate_from_run"]) == run else
                " (a short timing run of the same config on a quiet machine: `python bench/segmentation.py train "
                "--out runs/lung_trainspeed --set epochs=2 --set samples_per_epoch=240`)")
             + "; re-run: `python bench/segmentation.py speed --run " + str(run) + "` (end-to-end figure: median of "
             f"{len(sp.get('end_to_end_repeats', [0]))} passes; load in the machine line above)."),
            "",
        ]
    lines += [
        "## How the sources are handled",
        "",
        "- **Retrocardiac lung.** SCR (JSRT) lungs exclude the lung behind the heart; V7 and COVID-QU-Ex lungs "
        "include it. cxrlab's lung channels follow the inclusive convention: for SCR images the lung channels get "
        "no loss inside the SCR heart mask (neither \"lung\" nor \"background\" is taught there), and the heart "
        "channel is trained on SCR only (other sources have no heart mask, so that channel is unsupervised for "
        "them). At evaluation each source is scored in its own convention: with the shared channels, for SCR the "
        "predicted heart is removed "
        "from the predicted lungs before Dice/HD95.",
        "- **COVID-QU-Ex squashing.** Its images were resized to 256×256 by its authors and the original aspect "
        "is unknown, so it cannot be undone; images and masks are consistent, every image is letterboxed keeping "
        "its own aspect, and training uses an aspect-ratio jitter (`augment.aspect`) so the model does not "
        "depend on the aspect. HD95 is reported in pixels of a 256-px longest side for every source.",
        "- **Left/right.** Right/left lungs are the patient's; COVID-QU-Ex right/left were derived by connected "
        "components (as distributed). Post-processing decides sides anatomically (image-left component = "
        "patient right), so a swapped output is corrected.",
        *(["- **Annotation conventions.** Beyond the retrocardiac lung the sources' annotators draw lungs "
           "differently (the cross-source table: each single-source model scores far lower on the others' masks). "
           "The model has the shared lung channels (every source trains them; SCR's retrocardiac region is "
           "ignored there as above) and one pair of right/left lung channels per convention, trained only by that "
           "convention's sources, as drawn (for SCR without the retrocardiac lung). The shared decoder and encoder "
           "learn from all sources; only the last 3×3 convolution is per convention."]
          if recipe.get("lung_conventions") else []),
        "- **Missing targets** (no heart mask outside JSRT) are ignored per image and channel, never treated "
        "as background.",
        "",
    ]
    lines += [
        "## Using the model",
        "",
        "```bash",
        f"cxrlab segment predict path/to/*.png --run {run} --out runs/masks     # masks, overlays, manifest.csv",
        f"cxrlab segment evaluate --run {run} --out runs/lung_eval.json           # the run's own test split",
        "cxrlab segment train --config lung.yaml --set epochs=10 --set size=256 --out runs/my_lung [--resume]",
        "```",
        "",
        "```python",
        "from cxrlab.anatomy import LungSegmenter, lung_zones, lung_biomarkers",
        f"seg = LungSegmenter.from_run(\"{run}\")",
        "masks = seg.predict(image)  # patient_right_mask, patient_left_mask, lung_mask, heart_mask (input size)",
        *([f"{name}_lungs = LungSegmenter.from_run(\"{run}\", convention=\"{name}\").predict(image)"
           "  # lungs as that convention's annotators draw them" for name in (recipe.get("lung_conventions") or {})]),
        "```",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
