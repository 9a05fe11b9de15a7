"""Evaluating a run directory's predictions without its model: binary (operating point fixed on validation)
and regression targets, read from the task configuration the trainer saves."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cxrlab.errors import InputError
from cxrlab.evaluate import build_report, threshold_metrics, youden_threshold
from cxrlab.evaluate.run import read_run, targets_of

TASKS = [{"kind": "binary", "name": "icu", "column": "went_icu"},
         {"kind": "severity", "name": "severity", "columns": ["geographic_extent"]}]


@pytest.fixture()
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    pid = [f"p{i // 3}" for i in range(n)]
    split = np.array(["train", "val", "test"])[[(i // 3) % 3 for i in range(n)]]
    y = rng.integers(0, 2, n)
    extent = rng.uniform(0, 8, n)
    pred = pd.DataFrame({"image": [f"/x/img{i}.png" for i in range(n)], "patient_id": pid, "split": split,
                         "source_dataset": "sim", "sex": np.where(np.arange(n) % 2, "M", "F"),
                         "went_icu": y.astype(float), "prob_went_icu": np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1),
                         "geographic_extent": extent, "pred_geographic_extent": extent + rng.normal(0, 1, n)})
    pred.loc[5, "went_icu"] = np.nan  # an unlabelled row is skipped, not guessed
    pred.to_parquet(tmp_path / "predictions.parquet")
    (tmp_path / "model.json").write_text(json.dumps({"tasks": TASKS}))
    (tmp_path / "recipe.yaml").write_text("name: sim\nseed: 7\n")
    return tmp_path


def test_targets_follow_the_task_config(run_dir):
    run = read_run(run_dir)
    targets = {t.name: t for t in targets_of(run.tasks, run.predictions)}
    assert targets["went_icu"].kind == "binary" and targets["geographic_extent"].kind == "regression"


def test_binary_threshold_fixed_on_validation_and_applied_to_test(run_dir):
    report = build_report(run_dir, n_boot=50, gallery=False)
    m = json.loads((report.parent / "metrics.json").read_text())
    icu = m["targets"]["went_icu"]
    df = pd.read_parquet(run_dir / "predictions.parquet").dropna(subset=["went_icu"])
    val, test = df[df.split == "val"], df[df.split == "test"]
    t = youden_threshold(val.went_icu.astype(int), val.prob_went_icu)
    assert icu["validation_threshold"] == pytest.approx(t)
    expected = threshold_metrics(test.went_icu.astype(int), test.prob_went_icu, t)
    assert icu["splits"]["test"]["fixed"]["sensitivity"] == pytest.approx(expected["sensitivity"])
    assert icu["splits"]["test"]["n"] == len(test)
    assert icu["splits"]["test"]["metrics"]["fixed.specificity"]["low"] is not None
    ext = m["targets"]["geographic_extent"]["splits"]["test"]["metrics"]
    err = test.pred_geographic_extent - test.geographic_extent
    assert ext["mae"]["value"] == pytest.approx(np.abs(err).mean(), rel=1e-6)
    assert ext["bland_altman.bias"]["value"] == pytest.approx(err.mean(), rel=1e-6)
    assert "points" not in m["targets"]["geographic_extent"]["splits"]["test"]  # raw arrays stay out of the json
    assert {r["level"] for r in icu["subgroups"]["sex"]} == {"F", "M"}
    html = report.read_text()
    assert "Bland-Altman" in html and "ROC curve" in html and "not requested" in html
    assert len(re.findall(r"data:image/png;base64,", html)) >= 5


@pytest.mark.parametrize("change,message", [
    (lambda d: (d / "predictions.parquet").unlink(), "no predictions.parquet"),
    (lambda d: (d / "model.json").write_text(json.dumps({"tasks": [{"kind": "binary", "column": "nope"}]})),
     "no evaluable target"),
])
def test_bad_run_directories_name_the_problem(run_dir, change, message):
    change(run_dir)
    with pytest.raises(InputError, match=message):
        build_report(run_dir, n_boot=0, gallery=False)


def test_reader_table_must_match_targets(run_dir, tmp_path):
    readers = tmp_path / "readers.csv"
    pd.DataFrame({"image": ["/x/img1.png"], "other@r1": [1]}).to_csv(readers, index=False)
    with pytest.raises(InputError, match="<target>@<reader>"):
        build_report(run_dir, readers=readers, n_boot=0, gallery=False)
