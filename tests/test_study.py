"""The study runner (cxrlab.study) on the phantom: grid expansion, ranking, one split per fold shared by every
combination, a 2-worker local Ray run of a whole protocol, resume after an interrupted study, per-side models,
and the installed CLI refusing a bad study file in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.errors import ConfigError, InputError
from cxrlab.study import expand_grid, joint_best, load_study, rank, top_k
from cxrlab.study.spec import StudySpec

TINY_SET = ["input.size=64", "model.backbone=resnet18", "model.weights=none", "input.augment=[]",
            "train.batch_size=32", "train.num_workers=0", "train.early_stopping_patience=2",
            "train.stages=[{epochs: 2, train_blocks: 0, lr: 0.01}, {epochs: 1, train_blocks: 1, lr: 0.001}]"]


ZONES = {"right": ["brixia_A", "brixia_B", "brixia_C"], "left": ["brixia_D", "brixia_E", "brixia_F"]}


def tiny_study(**extra) -> dict:
    return {"name": "tiny", "recipe": "aloe-opacity",
            "set": TINY_SET + ["train.balancing=double"], "grid": {"input.roi": ["none", "lung"]},
            "sides": ["right", "left"], "folds": 3, "hcs_images": 4, "stratify": None,
            "data": [{"role": "train"}, {"role": "readers"}],  # readers: the phantom's Brixia zones, twice
            "readers": {"r1": ZONES, "r2": ZONES},
            "selection_rule": "rank sum of pooled macro-MAE and MA-HCS",
            "protocol": [{"kind": "screen", "fold": 0, "rank_by": {"name": "macro_mae"}, "top": 1},
                         {"kind": "cv"},
                         {"kind": "select", "criterion": [{"name": "macro_mae"}, {"name": "ma_hcs", "goal": "max"}]},
                         {"kind": "final", "seed": 1}],
            **extra}


# --- grid, ranking, spec -----------------------------------------------------------------------------------
def test_expand_grid_product_ids_and_overrides():
    combos = expand_grid({"model.backbone": ["resnet50", "vgg16", "densenet121"], "input.roi": ["none", "lung"],
                          "train.stages": [[{"epochs": 1}], [{"epochs": 2}]]})
    assert len(combos) == 12
    assert len({c.id for c in combos}) == 12
    assert combos[0].as_dict() == {"model.backbone": "resnet50", "input.roi": "none", "train.stages": [{"epochs": 1}]}
    assert combos[1].as_dict()["train.stages"] == [{"epochs": 2}]  # last key varies fastest
    assert combos[0].overrides()[:2] == ["model.backbone=resnet50", "input.roi=none"]
    assert combos[0].overrides()[2] == 'train.stages=[{"epochs": 1}]'


def test_shipped_opacity_study_is_the_papers_grid():
    spec = load_study("aloe-opacity")
    assert len(expand_grid(spec.grid)) == 27
    assert spec.grid["input.roi"] == ["none", "lung", "midline"]
    assert spec.grid["train.balancing"] == ["under", "double", "over"]
    assert spec.sides == ["right", "left"]
    assert [s.kind for s in spec.protocol] == ["screen", "cv", "select", "final"]
    assert "midline" in spec.grid_labels["input.roi"] and "spine" in spec.grid_labels["input.roi"]
    assert "MA-HCS" in spec.selection_rule
    quick = spec.with_preset("quick")
    assert "input.size=256" in quick.set and quick.protocol[0].top == 2
    assert quick.grid["train.balancing"] == ["under", "double", "over"]  # the paper's three schemes
    assert "train.augment_views=4" in quick.set  # over draws among cached augmented views (a pass per view)
    assert "tasks.0.decision=median" in spec.set  # the MAE's Bayes decision, both presets (stated in the notes)
    assert spec.presets["quick"].max_patients is None  # every patient: the hour allows it (docs/study.md)
    assert "input.size=224" in spec.with_preset("paper").set
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        spec.with_preset("huge")


def test_rank_top_k_and_joint_selection():
    scores = {"a": {"macro_mae": 0.5, "ma_hcs": 0.6}, "b": {"macro_mae": 0.4, "ma_hcs": 0.3},
              "c": {"macro_mae": float("nan"), "ma_hcs": 0.9}, "d": {"macro_mae": 0.45, "ma_hcs": 0.8}}
    assert rank(scores, "macro_mae") == ["b", "d", "a", "c"]  # NaN last
    assert top_k(scores, "macro_mae", 2) == ["b", "d"]
    assert top_k(scores, "ma_hcs", 1, goal="max") == ["c"]
    best, table = joint_best(scores, [("macro_mae", "min"), ("ma_hcs", "max")])
    assert best == "d"  # ranks 2 + 2 beat b (1 + 4) and c (4 + 1) on the tie-break by macro_mae
    assert table["d"]["rank_sum"] == 4 and table["b"]["rank_sum"] == 5


def test_bad_study_is_one_error_naming_the_field(tmp_path):
    with pytest.raises(InputError, match="grid.input.roi"):
        load_study({**tiny_study(), "grid": {"input.roi": []}})
    with pytest.raises(InputError, match="protocol.1.*after a cv"):
        load_study({**tiny_study(), "protocol": [{"kind": "screen", "rank_by": {"name": "mae"}},
                                                 {"kind": "select", "criterion": [{"name": "mae"}]}]})
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nrecipe: aloe-opacity\ngrid: {a: [1]}\nprotocol: [{kind: cv}]\nfolds: 1\n")
    with pytest.raises(InputError, match="bad.yaml.*folds"):
        load_study(path)


def test_installed_cli_bad_study_file_one_line(tmp_path):
    path = tmp_path / "bad_study.yaml"
    path.write_text("name: x\nrecipe: aloe-opacity\ngrid: {input.roi: [none]}\nprotocol: [{kind: cv}]\nbogus: 1\n")
    cli = Path(sys.executable).with_name("cxrlab")
    proc = subprocess.run([str(cli), "study", "run", str(path), "--data", str(tmp_path / "m.csv"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad_study.yaml" in lines[0] and "bogus" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_side_needs_a_per_lung_roi(phantom_root, tmp_path, cxrlab_home):
    from cxrlab.train import train

    with pytest.raises(ConfigError, match="train.side=right needs a per-lung ROI"):
        train("aloe-opacity", [phantom_root / "manifest.csv"], tmp_path / "run", show_progress=False,
              overrides=[*TINY_SET, "input.roi=none", "train.side=right", "train.balancing=under"])


# --- a whole study on local Ray (2 workers) --------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    from cxrlab.study.engine import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def study_dir(phantom_root, tmp_path_factory, ray_session, cxrlab_home):
    from cxrlab.study import run_study

    out = tmp_path_factory.mktemp("study") / "tiny"
    lines: list[str] = []
    run_study(StudySpec.model_validate(tiny_study()), [phantom_root / "manifest.csv"] * 2, out, log=lines.append)
    (out / "log.txt").write_text("\n".join(lines))
    return out


def test_two_worker_ray_study_runs_the_protocol(study_dir):
    stages = json.loads((study_dir / "stages.json").read_text())["stages"]
    assert [s["kind"] for s in stages] == ["screen", "cv", "select", "final"]
    for side in ("right", "left"):
        ranking = stages[0]["sides"][side]["ranking"]
        assert len(ranking) == 2
        assert all(r["ma_hcs"] is not None and 0 <= r["ma_hcs"] <= 1 for r in ranking)  # HCS for every ROI
        maes = [r["macro_mae"] for r in ranking]
        assert maes == sorted(maes)  # ranked best first
        kept = stages[0]["sides"][side]["kept"]
        assert kept == [ranking[0]["combo"]]
        assert list(stages[1]["sides"][side]) == kept
        assert stages[2]["sides"][side]["best"] == kept[0]
        oof = pd.read_parquet(study_dir / "oof" / f"{kept[0]}__{side}.parquet")
        assert sorted(oof["fold"].unique()) == [0, 1, 2]
        pooled = stages[1]["sides"][side][kept[0]]["pooled"]
        # both decision rules on the same pooled probabilities; the study's own (ce: mode) is the ranked one
        assert pooled["macro_mae"] == pytest.approx(pooled["macro_mae_mode"])
        assert 0 <= pooled["macro_mae_median"] <= 3
        low, high = pooled["macro_mae_ci"]  # patient bootstrap around the pooled figure
        assert low <= pooled["macro_mae"] <= high and low < high
        assert oof["patient_id"].duplicated().sum() == 0 or oof.groupby("patient_id")["fold"].nunique().max() == 1
    log = (study_dir / "log.txt").read_text().splitlines()
    finished = [ln for ln in log if "macro-MAE" in ln]
    assert len(finished) == 2 * 2 + 2 * 2 + 2  # screen 4, cv 2 new folds x 2 sides, final 2: one line each
    assert finished[-1].startswith("[####################] 10/10")
    html = (study_dir / "report.html").read_text()
    assert "Table 3 analogue" in html and "Tables 4-5 analogue" in html and "<table>" in html
    assert "median grade" in html
    assert (study_dir / "report.md").read_text().count("|---") >= 5


def test_reader_and_subgroup_tables(study_dir, phantom_root):
    from cxrlab.study.prepare import reader_grades

    md = (study_dir / "report.md").read_text()
    assert "Tables 6-7 analogue" in md and "Table 7 analogue" in md and "Table 8 analogue" in md
    table67 = md[md.index("Tables 6-7 analogue"):md.index("Table 7 analogue")]
    rows = {ln.split("|")[1].strip() + "/" + ln.split("|")[2].strip(): ln for ln in table67.splitlines()
            if ln.startswith("| r1 vs")}
    assert rows["r1 vs r2/right"].split("|")[4].strip().startswith("0.000")  # identical readers: MAE 0
    assert "r1 vs model/average" in rows
    pred = pd.read_parquet(study_dir / "readers_predictions.parquet")
    df = pd.read_csv(phantom_root / "manifest.csv")
    assert len(pred) == len(df)
    assert np.array_equal(pred["r1_right"].to_numpy(), reader_grades(df, ZONES["right"]))
    for side in ("right", "left"):
        assert set(pred[f"model_{side}"].unique()) <= {0.0, 1.0, 2.0, 3.0}
    means = md[md.index("Mean grade per rater"):md.index("Scale or ordering?")]
    rater_rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:6]] for ln in means.splitlines()
                  if ln.startswith("| ") and not ln.startswith("| rater")}
    assert set(rater_rows) == {"model", "r1", "r2"}
    assert rater_rows["r2"][1] == "0% / 0%" and rater_rows["r1"][1] == ""  # r2 grades as r1; r1 is the reference
    assert float(rater_rows["model"][0]) == pytest.approx(pred["model_right"].mean(), abs=0.006)
    above = (pred["model_left"] > pred["r1_left"]).mean()
    assert rater_rows["model"][3].startswith(f"{above:.0%} / ")
    scale = md[md.index("Scale or ordering?"):md.index("Table 7 analogue")]
    relab = {(ln.split("|")[1].strip(), ln.split("|")[2].strip()): [c.strip() for c in ln.split("|")[3:8]]
             for ln in scale.splitlines() if ln.startswith("| ") and not ln.startswith("| rater")}
    assert set(relab) == {(r, side) for r in ("model", "model (expected grade)", "r2") for side in ("right", "left")}
    scores = pred[["model_score_right", "model_score_left"]].to_numpy(float)
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 3)).all()  # expected grades, kept for the map
    assert relab[("r2", "right")][1].startswith("0.000") and relab[("r2", "right")][3] == "0.000"
    # the in-sample bound never exceeds the MAE as graded (the identity is one of the maps it searches)
    assert float(relab[("model", "left")][3]) <= float(relab[("model", "left")][1])
    # pictures: written under DIR/figures, linked from the markdown and the HTML report
    html = (study_dir / "report.html").read_text()
    for name in ("screen_right.png", "screen_left.png", "cv_confusion_right.png", "readers_right.png",
                 "readers_left.png"):
        assert (study_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{name})" in md and f"src='figures/{name}'" in html
    # the pooled out-of-fold confusion table counts the chosen combination's out-of-fold rows
    stages = json.loads((study_dir / "stages.json").read_text())
    best = next(s for s in stages["stages"] if s["kind"] == "select")["sides"]["right"]["best"]
    oof = pd.read_parquet(study_dir / "oof" / f"{best}__right.parquet")
    part = md[md.index(f"Pooled out-of-fold confusion of {best} (right)"):]
    counts = [[int(c) for c in ln.split("|")[3:7]] for ln in part.splitlines()[1:8] if ln.startswith("| right |")]
    expected = pd.crosstab(oof["opacity_right"], oof["pred_opacity_right"]).reindex(
        index=range(4), columns=range(4), fill_value=0).to_numpy()
    assert np.array_equal(np.array(counts), expected)
    table8 = md[md.index("Table 8 analogue"):]
    assert "| sex | F |" in table8 and "| sex | M |" in table8 and "| age | " in table8


def test_best_is_an_ordinary_run_dir_per_side(study_dir, phantom_root):
    from cxrlab.train import load_run

    for side in ("right", "left"):
        run_dir = study_dir / "best" / side
        recipe = (run_dir / "recipe.yaml").read_text()
        pred = load_run(run_dir).predict(phantom_root / "manifest.csv")
        assert pred[f"pred_opacity_{side}"].notna().all()
        model = json.loads((run_dir / "model.json").read_text())
        if model["per_image"] == 2:
            assert f"side: {side}" in recipe  # one lung's inputs only
        else:
            assert list(model["heads"]) == [f"opacity:opacity_{side}"]  # one head: that lung


def test_folds_identical_across_combinations_and_sides(study_dir):
    from cxrlab.data.splits import load_split

    for k in range(3):
        ref = load_split(study_dir / "splits" / f"fold{k}.csv").set_index("image")["split"]
        runs = list((study_dir / "trials").glob(f"*/*/fold{k}"))
        assert len(runs) == (4 if k == 0 else 2)
        for run in runs:
            got = pd.read_csv(run / "split.csv").set_index("image")["split"]
            assert got.equals(ref.loc[got.index]), run
    tests = [set(pd.read_csv(study_dir / "splits" / f"fold{k}.csv").query("split == 'test'")["patient_id"])
             for k in range(3)]
    assert not (tests[0] & tests[1]) and not (tests[1] & tests[2]) and not (tests[0] & tests[2])


def test_resume_after_an_interrupted_study(study_dir, phantom_root, tmp_path, ray_session):
    """A copy of the study as a kill leaves it: one trial without its result (its training interrupted after
    the checkpoint), the final stage not run, no report. The rerun trains only what is missing."""
    from cxrlab.study import run_study

    out = tmp_path / "resumed"
    shutil.copytree(study_dir, out)
    victim = next(out.glob("trials/*/right/fold1"))
    (victim / "trial.json").unlink()
    (victim / "metrics.json").unlink()
    shutil.rmtree(out / "best")
    for f in ("stages.json", "report.html", "report.md"):
        (out / f).unlink()
    for t in out.glob("trials/*/*/final"):
        shutil.rmtree(t)
    untouched = next(out.glob("trials/*/left/fold0"))
    before = (untouched / "trial.json").stat().st_mtime_ns
    # another grid in the same directory is refused before anything runs
    other = tiny_study()
    other["grid"] = {k: v[:1] for k, v in other["grid"].items()}
    with pytest.raises(ConfigError, match="holds another study"):
        run_study(StudySpec.model_validate(other), [phantom_root / "manifest.csv"] * 2, out)
    # an edited description is not another study: it resumes, and the report's words are the new ones
    edited = {**tiny_study(), "description": "the tiny study, described anew", "notes": ["a new note"]}
    lines: list[str] = []
    run_study(StudySpec.model_validate(edited), [phantom_root / "manifest.csv"] * 2, out, log=lines.append)
    assert any("only descriptive text changed" in ln for ln in lines)
    assert "described anew" in (out / "study.yaml").read_text()
    done = [ln for ln in lines if "macro-MAE" in ln]
    assert len(done) == 3  # the interrupted fold and the two final models, nothing else retrained
    assert (untouched / "trial.json").stat().st_mtime_ns == before
    assert (victim / "trial.json").is_file() and (out / "best" / "left" / "metrics.json").is_file()
    a = json.loads((study_dir / "stages.json").read_text())["stages"][2]
    b = json.loads((out / "stages.json").read_text())["stages"][2]
    assert a["sides"]["right"]["best"] == b["sides"]["right"]["best"]


def test_one_sided_task_balances_on_its_own_lung():
    from cxrlab.tasks import TaskSet

    targets = np.array([[0, 3], [2, 0], [1, 1], [np.nan, 2]], dtype=np.float32)  # (right, left) per image
    both = TaskSet.from_config([{"kind": "opacity", "sides": ["right", "left"]}])
    right = TaskSet.from_config([{"kind": "opacity", "sides": ["right"]}])
    assert both.strata(targets).tolist() == [3, 2, 1, 2]  # the two-headed model: the worse lung
    assert right.strata(targets[:, :1]).tolist() == [0, 2, 1, -1]  # the right model: the right lung only


def test_train_side_trains_and_validates_one_lung(phantom_root, tmp_path, cxrlab_home):
    from cxrlab.train import train

    run = train("aloe-opacity", [phantom_root / "manifest.csv"], tmp_path / "left", show_progress=False,
                overrides=[*TINY_SET, "input.roi=lung", "train.side=left", "train.balancing=double"])
    hist = pd.read_csv(run / "history.csv")
    assert any(c.startswith("val_opacity_left.") for c in hist.columns)
    assert not any(c.startswith("val_opacity_right.") for c in hist.columns)  # the other lung is not scored
    pred = pd.read_parquet(run / "predictions.parquet")
    assert pred["pred_opacity_left"].notna().all()


def test_a_memory_kill_is_one_clear_error_that_names_the_way_out(tmp_path, monkeypatch):
    """Ray kills a worker when the node runs low on memory and Tune raises it from fit(), not as a trial
    error; the study says so in one line and how to go on (resume, fewer trials at once)."""
    from ray import tune

    from cxrlab.study import engine

    class OutOfMemoryError(Exception):  # the name Ray's exception has
        pass

    class FakeTuner:
        def __init__(self, *args, **kwargs):
            pass

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            try:
                raise OutOfMemoryError("1 worker(s) were killed due to the node running low on memory.\n"
                                       "Memory on the node was 22.48GB used / 23.54GB limit")
            except OutOfMemoryError as exc:
                raise RuntimeError("Caught unexpected exception") from exc

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    with pytest.raises(engine.StudyError, match=r"stage0-screen: a trial was killed .* low on memory .*"
                                                 r"--trials-at-once 1"):
        engine._fit(tmp_path / "stage0-screen", [], None, "stage0-screen")
    assert engine.is_memory_kill(RuntimeError("the node running low on memory"))
    assert not engine.is_memory_kill(RuntimeError("CUDA error"))



def _raylet_with_agent() -> tuple[subprocess.Popen, int]:
    """A process titled ``raylet`` that starts a child titled like a Ray agent (``ray::...``); returns the
    "raylet" and the agent's pid."""
    agent = ("import ray._raylet, time; ray._raylet.setproctitle('ray::CxrlabTestAgent'); "
             "print('up', flush=True); time.sleep(120)")
    raylet = ("import subprocess, sys, time, ray._raylet; ray._raylet.setproctitle('raylet'); "
              f"c = subprocess.Popen([sys.executable, '-c', {agent!r}], stdout=subprocess.PIPE, text=True); "
              "c.stdout.readline(); print(c.pid, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", raylet], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_ray_processes_whose_raylet_died_are_ended_and_others_kept():
    """A kill -9 of a study's driver leaves Ray's agents running (ray-project/ray#52385); the next local start
    ends those whose raylet is gone and no other."""
    import psutil

    from cxrlab.study.engine import end_orphaned_ray_processes

    dead_raylet, orphan = _raylet_with_agent()
    live_raylet, served = _raylet_with_agent()
    dead_raylet.kill()  # as when the driver and its raylet are killed: the agent is handed to init
    dead_raylet.wait()
    lines: list[str] = []
    try:
        ended = end_orphaned_ray_processes(lines.append)
        assert orphan in ended and served not in ended
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        assert psutil.Process(served).is_running()
        assert len(lines) == 1 and str(orphan) in lines[0] and "killed" in lines[0]
    finally:
        for pid in (orphan, served):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        live_raylet.kill()
        live_raylet.wait()
