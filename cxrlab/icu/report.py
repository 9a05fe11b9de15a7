"""docs/benchmarks/icu.md from the study's results (``bench/icu.py`` writes ``results.json`` and calls
:func:`render`); every number on the page comes from ``results``."""

from __future__ import annotations

import math
from typing import Any

from cxrlab.icu.arms import ARMS, BASELINE


def _ci(est: dict | None, digits: int = 2) -> str:
    if not est or est.get("value") is None or (isinstance(est["value"], float) and math.isnan(est["value"])):
        return "—"
    lo, hi = est.get("low"), est.get("high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{est['value']:.{digits}f}"
    return f"{est['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _p(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def render(results: dict[str, Any]) -> str:
    arms, data, proto = results["arms"], results["data"], results["protocol"]
    m = results["machine"]
    lines = [
        "# ICU admission: ImageNet vs X-ray pretraining vs embedding + small classifier, with and without fusion",
        "",
        f"Regenerate: `{results['command']}` (`--report-only` rewrites this page from the saved predictions).",
        f"Machine: {m.get('cpu')} with {m.get('cores')} cores, torch {m.get('torch')}, one torch thread per process; "
        f"**shared** with other jobs (load average before {results['load_before']}, after "
        f"{results['load_after']}) for this page, {results['started']} → {results['finished']} (UTC). The arms "
        "were trained by earlier invocations of the same command (finished folds are reused); when each arm "
        "finished and its summed fold training time: " + "; ".join(
            f"{k} {v['finished']}" + (f" ({v['train_seconds']} s)" if v.get("train_seconds") else "")
            for k, v in results.get("training", {}).items()) + ". During training the machine was heavily loaded "
        "(two arms in parallel plus other helpers' jobs on 2 cores); its load was not recorded per arm.",
        "",
        "## Data and protocol",
        "",
        f"- Shared ieee8023 manifest (`cxrlab data import cxrlab`), `covid-icu` filter `finding: covid19`, frontal "
        f"views (PA, AP, AP Supine), event filter `in_icu` (films taken in the ICU removed: "
        f"{data['removed_by_event_filter']}). **{data['images']} films of {data['patients']} patients** have an "
        f"ICU label ({data['icu_images']} films / {data['icu_patients']} patients went to the ICU); views "
        f"{data['views']}.",
        f"- ONE patient-level {proto['folds']}-fold CV (stratified by patient label, seed 0), written once as split "
        f"files and read by every arm (`cxrlab.icu.folds`; the same folds as the recipe's `split.folds`); inside "
        "each fold 15 % of the training patients validate (early stopping / checkpoint choice and the Youden cut).",
        f"- Fine-tuned arms: `covid-icu` (EfficientNet-Lite0, image + lung mask, CLAHE `True_.04_8`, Adam 1e-4, "
        f"class weights) at **{proto['size']} px for {proto['epochs']} epochs**, all blocks trained — the CPU "
        "budget of a shared 2-core machine (the paper's 224 px / 30 epochs would take hours here). "
        f"Lung masks: V7 masks of the manifest; `--lung-model {proto['lung_model']}` for any film without one.",
        "- Embedding arms: pooled Lite0 features (`cxrlab.retrieval.embed`, 224 px) and the data-efficient "
        "classifier of `cxrlab.train.embedding_head` (MLP 256, dropout 0.2, class weights, early stopping on the "
        "fold's val patients), trained per fold on the same split files (`cxrlab.icu.cv.head_cv`).",
        f"- Fusion: {data['fusion']['images']} ieee8023 films ({data['fusion']['patients']} patients, "
        f"{data['fusion']['severe']} labelled severe) whose patients have no ICU label but a Cohen "
        f"geographic-extent score (0–8), labelled ICU when the score is ≥ {data['fusion_threshold']:g} (more than "
        "half of both lungs involved — the severe end of the score; with only 7 patients carrying both a score and "
        "an ICU label the cut cannot be fitted on data) and no ICU otherwise; they are train-only (never val/test, "
        "tested in `tests/test_icu_study.py`, `tests/test_icu_arms.py`) and pass the same COVID-19 / frontal / "
        "event filters. COVID-QU-Ex infection fractions were not used (that source was not built; see below).",
        f"- X-ray-pretrained backbone: `{proto['xray_backbone']}` (a cxrlab pretraining run on sources other than "
        "ieee8023, issue #15)" + (f": {results['xray_note']}" if results.get("xray_note") else "") + ". "
        "TorchXRayVision/ELIXR weights cannot be downloaded offline; `xrv:` loads a local file only.",
        f"- AUC: pooled out-of-fold test predictions, patient-level bootstrap 95 % CI ({proto['n_boot']} draws). "
        "Sensitivity/specificity: each fold's threshold is the Youden point of its **validation** films, applied to "
        "its test films, pooled. Paired comparison with the baseline on the same films: patient-level paired "
        "bootstrap (difference, CI, two-sided p) and DeLong's test (films treated as independent, so optimistic).",
        "",
        "## Results",
        "",
        "| arm | AUC [95 % CI] | sens | spec | films / patients | Δ AUC vs (a) [95 % CI] | bootstrap p | DeLong p "
        "| HCS (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        r = arms.get(arm.name)
        if r is None:
            lines.append(f"| {arm.label} | not run | | | | | | | |")
            continue
        vs = r.get("vs_baseline")
        hcs = r.get("hcs")
        lines.append(
            f"| {arm.label} | {_ci(r['auc'])} | {r['sensitivity']:.2f} | {r['specificity']:.2f} | "
            f"{r['images']} / {r['patients']} | {_ci(vs['difference']) if vs else 'baseline'} | "
            f"{_p(vs['bootstrap_p']) if vs else ''} | {_p(vs['delong'].get('p')) if vs else ''} | "
            f"{'—' if hcs is None else f'{hcs:.3f}'} |")
    lines += ["", "## The acquisition-view confound", "",
              "View-only baseline: AP/supine = 1, PA = 0 as the score, on the same films as each arm. Each arm's "
              "AUC within AP/supine films and within PA films (patient-level bootstrap CIs).", "",
              "| arm | view-only AUC | arm AUC (same films) | arm − view | within AP/supine | within PA |",
              "|---|---|---|---|---|---|"]
    for arm in ARMS:
        r = arms.get(arm.name)
        if r is None or "confound" not in r:
            continue
        c = r["confound"]
        w = c.get("within_view", {})
        lines.append(f"| {arm.label} | {_ci(c.get('view_only_auc'))} | {_ci(c.get('model_auc'))} | "
                     f"{_ci(c.get('model_minus_view_auc'))} | {_ci(w.get('ap_supine'))} | {_ci(w.get('pa'))} |")
    any_c = next((r["confound"] for r in arms.values() if "confound" in r), None)
    if any_c:
        v = any_c["views"]
        lines += ["", f"Films per view: AP/supine {v['ap_supine']['images']} films of {v['ap_supine']['patients']} "
                      f"patients ({v['ap_supine']['positives']} ICU), PA {v['pa']['images']} films of "
                      f"{v['pa']['patients']} patients ({v['pa']['positives']} ICU); {any_c['left_out']} film(s) "
                      "without a usable view left out."]
    best = max(arms.items(), key=lambda kv: kv[1]["auc"]["value"]) if arms else None
    lines += ["", "## Done-when check", ""]
    if best:
        met = best[1]["auc"]["value"] >= 0.75
        lines.append(f"Best arm: {best[1]['label']}, CV AUC {_ci(best[1]['auc'])} — the target CV AUC ≥ 0.75 "
                     f"is **{'met' if met else 'not met'}** by the point estimate only: the CI shows how little "
                     f"{data['patients']} patients pin it down, and the best of {len(arms)} arms on one CV is an "
                     "optimistic pick (no arm differs from the baseline by the paired tests).")
    missing = results.get("missing_arms") or []
    if missing:
        lines += ["", "Arms without numbers: " + ", ".join(f"`{a}`" for a in missing) + ". " +
                  results.get("missing_reason", "")]
    if results.get("galleries"):
        lines += ["", "## Grad-CAM galleries (fine-tuned arms)", "",
                  "Grad-CAM of each fold's model on its own test films (probability-weighted, lung contour drawn); "
                  "HCS = share of the heatmap inside the lungs (`cxrlab.explain.hcs`, default definition); the table's HCS "
                  "is the mean over a fixed sample of 2 ICU + 2 non-ICU test films per fold (the same films for every "
                  "arm; the CPU budget did not allow all films). Embedding arms have "
                  "no fine-tuned convolutional head to explain and no gallery.", ""]
        for name, png in results["galleries"].items():
            lines.append(f"![{name}]({png})")
    lines += ["", "## What these numbers cannot show", "",
              f"- **Tiny n.** {data['patients']} patients; CIs of ±0.1–0.2 AUC. Differences between arms are mostly "
              "inside the noise (see the paired p values); no arm ranking should be read from one CV.",
              "- **View confound.** ICU patients are mostly filmed AP/supine; the view-only row shows how much of any "
              "AUC the view alone explains. Within-view AUCs rest on very few films per view — see the film counts "
              "under the confound table (AP/supine films are almost all ICU, so the within-AP/supine AUC rests on a "
              "handful of non-ICU films).",
              "- **Thresholds.** Each fold's validation part holds only a handful of films, so the Youden cuts "
              "(and the sensitivity/specificity they give) are noisy; they are honest (never chosen on test), not "
              "stable.",
              "- **HCS.** With the default (`nonzero`) definition a Grad-CAM map that covers the whole film scores "
              "about the lungs' share of the image, so near-equal HCS across arms says little about where each "
              "model looks; the galleries are the qualitative evidence, on six films.",
              "- **Source shortcuts.** ieee8023 films come from many publications; ICU and non-ICU patients come "
              "from different papers (different processing, crops, annotations), which a CNN can learn.",
              "- **Fusion labels are a proxy.** Severity ≥ threshold is not ICU admission; the fused films are also "
              "from ieee8023 (other patients), so fusion adds images of the same source, not a second hospital.",
              "- **Reduced budget.** Fine-tuning at a small size and few epochs on a shared CPU; the paper's "
              "full-size arms were not run (no accelerator in this run).",
              "- **Not tested here:** the external hospital set (new patients scored with `cxrlab predict`, the "
              "issue's AUC ≥ 0.80 within AP/supine and beating the view-only baseline) is not available in the "
              "shared data; COVID-QU-Ex infection-fraction fusion was not run; TorchXRayVision/ELIXR backbones "
              "cannot be downloaded offline."]
    return "\n".join(lines) + "\n"
