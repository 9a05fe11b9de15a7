"""An ensemble recipe run as a study (issue #18): ``cxrlab study run flannel-patch-quick --data M1 --data M2
--lung-model LUNG --out DIR [--address ADDR]``.

Every (base learner, fold) is one Ray Tune trial (:func:`cxrlab.train.ensemble.run_fold_trial`; local Ray with
one CPU per trial, or a cluster), all learners on the same patient-level folds; then the combiners are evaluated
out-of-fold and fitted, as ``cxrlab train`` does. ``DIR/best/`` is the ensemble run (``cxrlab predict``,
``evaluate``, ``serve`` take it); ``DIR/report.md`` / ``report.html`` hold the per-class F1 table (mean ± sd over
the folds) and a per-fold macro-F1 figure. Rerunning the same command resumes (finished trials are kept).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from cxrlab.errors import ConfigError, InputError
from cxrlab.utils import atomic_write_json

STUDY_FILE = "study.json"
KIND = "ensemble"


def run_ensemble_study(recipe: str | os.PathLike, data: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                       lung_model: str | os.PathLike | None = None, address: str | None = None,
                       preset: str | None = None, num_cpus: int | None = None,
                       log: Callable[[str], None] = print) -> Path:
    """Train (or resume) the ensemble under ``out/best`` on Ray Tune and write the study report; returns ``out``."""
    from cxrlab.train.ensemble import FINISHED, train_ensemble

    if preset is not None:
        raise ConfigError(f"--preset {preset}: an ensemble recipe carries its budget itself (e.g. flannel-patch-quick "
                          "for this CPU, flannel-patch for a GPU): drop --preset")
    out = Path(out)
    best = out / "best"
    if (best / FINISHED).is_file():
        log(f"{best}: finished before, kept")
    else:
        resume = (best / "recipe.yaml").is_file()
        log(f"ensemble study {recipe}: {'resuming' if resume else 'training'} {best} on Ray Tune")
        train_ensemble(recipe, list(data), best, resume=resume, lung_model=lung_model, engine="ray",
                       address=address, num_cpus=num_cpus, log=log)
    if not is_ensemble_study(out):  # a resumed study keeps what it was started with (the run's recipe rules)
        atomic_write_json(out / STUDY_FILE, {"kind": KIND, "recipe": str(recipe), "data": [str(d) for d in data],
                                             "lung_model": str(lung_model) if lung_model else None,
                                             "address": address})
    write_ensemble_report(out, log=log)
    return out


def is_ensemble_study(out: str | os.PathLike) -> bool:
    path = Path(out) / STUDY_FILE
    try:
        return path.is_file() and json.loads(path.read_text()).get("kind") == KIND
    except (OSError, json.JSONDecodeError):
        return False


def _fmt(scores: dict[str, Any], key: str) -> str:
    return f"{scores['mean'][key]:.3f} ± {scores['sd'][key]:.3f}"


def write_ensemble_report(out: str | os.PathLike, log: Callable[[str], None] = print) -> Path:
    """``out/report.md`` and ``out/report.html``: per-class F1, macro-F1 and accuracy (mean ± sd over the folds,
    out-of-fold) of every learner and combiner, and a figure of macro-F1 per fold."""
    from cxrlab.study.report import Doc

    out = Path(out)
    best = out / "best"
    if not (best / "metrics.json").is_file():
        raise InputError(out, "no finished ensemble under best/ (no best/metrics.json): run `cxrlab study run` first")
    metrics = json.loads((best / "metrics.json").read_text())
    study = json.loads((out / STUDY_FILE).read_text()) if (out / STUDY_FILE).is_file() else {}
    classes = metrics["classes"]
    doc = Doc()
    doc.h(f"Ensemble study {study.get('recipe', best.name)}", 1)
    doc.p(f"{metrics['images']} images, {metrics['folds']} patient-level folds shared by every learner; each "
          "(learner, fold) one Ray Tune trial; combiners evaluated out-of-fold (fitted on the other folds' "
          f"out-of-fold probabilities). The run's combiner: {metrics['combiner']}. Data: "
          f"{', '.join(study.get('data', []))}; lung model: {study.get('lung_model')}.")
    rows = []
    for kind, group in (("learner", metrics["learners"]), ("combiner", metrics["combiners"])):
        for name, s in group.items():
            rows.append([f"{kind} {name}", *[_fmt(s, f"f1_{c}") for c in classes], _fmt(s, "macro_f1"),
                         _fmt(s, "accuracy")])
    doc.h("Per-class F1 (one vs rest), mean ± sd over folds")
    doc.table(["model", *[f"F1 {c}" for c in classes], "macro-F1", "accuracy"], rows)
    figure = _figure(metrics, out / "macro_f1_per_fold.png")
    doc.h("Macro-F1 per fold")
    doc.p(f"Figure: {figure.name} (one point per fold, the bar is the mean).")
    (out / "report.md").write_text(doc.markdown() + f"\n![macro-F1 per fold]({figure.name})\n")
    encoded = base64.b64encode(figure.read_bytes()).decode()
    page = doc.html(f"Ensemble study {study.get('recipe', '')}")
    page = page.replace("</body>", f"<img alt='macro-F1 per fold' src='data:image/png;base64,{encoded}'></body>")
    (out / "report.html").write_text(page)
    log(f"report: {out / 'report.html'}")
    return out / "report.html"


def _figure(metrics: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, per_fold, means = [], [], []
    for kind, group in (("learner", metrics["learners"]), ("combiner", metrics["combiners"])):
        for name, s in group.items():
            names.append(f"{kind}\n{name}")
            per_fold.append([f["macro_f1"] for f in s["per_fold"]])
            means.append(s["mean"]["macro_f1"])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    ax.bar(range(len(names)), means, color="#9ecae1")
    for i, values in enumerate(per_fold):
        ax.scatter([i] * len(values), values, color="#08519c", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylabel("macro-F1 (out-of-fold)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
