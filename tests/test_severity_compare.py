"""`cxrlab severity compare` on the phantom: one severity run per decoder on one split, the paper's figures per
decoder, resume, the table and the plot, and clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrlab.anatomy.train import train_segmentation
from cxrlab.cli.main import app
from cxrlab.errors import ConfigError
from cxrlab.severity.compare import DECODERS, compare_decoders, comparison_table, decoder_config
from cxrlab.severity.config import load_severity_config

SEG = {"arch": "unet", "encoder": "resnet18", "weights": "none", "size": 64, "samples_per_epoch": 32,
       "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
       "augment": {"enabled": False}, "val_max_images": 8, "evaluate_test": False, "seed": 0}


@pytest.fixture(scope="module")
def study(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("compare")
    manifest = str(phantom_root / "manifest.csv")
    lung = train_segmentation({**SEG, "batch_size": 8, "lr": 1e-2, "epochs": 2, "manifests": [manifest]},
                              out=out / "lung")
    config = out / "severity.yaml"
    config.write_text(yaml.safe_dump({"lung_run": str(lung), "manifests": [manifest],
                                      "disease": {**SEG, "batch_size": 4, "lr": 3e-3, "epochs": 1,
                                                  "input": "image+lung",
                                                  "arch_kwargs": {"decoder_channels": [32, 16, 8, 8, 8]}}}))
    result = CliRunner().invoke(app, ["severity", "compare", str(config), "--out", str(out / "study"),
                                      "--decoders", "unet,fpn", "--speed-images", "4", "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    return {"out": out / "study", "config": config, "output": result.output}


def test_one_run_per_decoder_on_one_split(study):
    out = study["out"]
    splits = [pd.read_csv(out / d / "disease" / "split.csv", dtype=str).sort_values("image").reset_index(drop=True)
              for d in ("unet", "fpn")]
    pd.testing.assert_frame_equal(splits[0], splits[1])
    for d in ("unet", "fpn"):
        recipe = yaml.safe_load((out / d / "disease" / "recipe.yaml").read_text())
        assert recipe["arch"] == d
        assert recipe["arch_kwargs"] == {}  # smp's own decoder defaults, not the U-Net widths of the config


def test_figures_per_decoder(study):
    comparison = json.loads((study["out"] / "comparison.json").read_text())
    assert set(comparison["results"]) == {"unet", "fpn"} and comparison["split_digest"]
    for r in comparison["results"].values():
        assert 0 <= r["disease"]["dice_mean"] <= 1 and 0 <= r["disease"]["iou_mean"] <= r["disease"]["dice_mean"] + 1e-9
        assert r["dice_mean_ci"]["low"] <= r["disease"]["dice_mean"] <= r["dice_mean_ci"]["high"]
        assert 0 <= r["zone_count_mae_ci"]["value"] <= 6
        assert r["images_per_s"] > 0 and r["speed_images"] == 4
        assert r["params_m"] == pytest.approx(r["lung_params_m"] + r["disease_params_m"])
        assert r["gmacs"] > r["lung_gmacs"] > 0
        assert "fp_area_mean" in r["normal_false_positive"]
    # different decoders are different networks
    res = comparison["results"]
    assert res["unet"]["disease_params_m"] != res["fpn"]["disease_params_m"]
    table = comparison_table(comparison)
    assert list(table["decoder"]) == ["unet", "fpn"]
    md = (study["out"] / "comparison.md").read_text()
    assert "| unet |" in md and "| fpn |" in md and "comparison.png" in md
    assert (study["out"] / "comparison.png").stat().st_size > 1000
    assert "unet: Dice" in study["output"] and "fpn: Dice" in study["output"]


def test_rerun_resumes_without_retraining(study):
    out = study["out"]
    before = {d: (out / d / "compare.json").stat().st_mtime_ns for d in ("unet", "fpn")}
    ckpt = (out / "unet" / "disease" / "checkpoints" / "best.pt").stat().st_mtime_ns
    # a rerun with every result on disk only rewrites the page: the date and load stay those of the runs
    first = json.loads((out / "comparison.json").read_text())
    again = compare_decoders(study["config"], out, ["unet", "fpn"], speed_images=4, n_boot=20)
    assert again["machine"]["date"] == first["machine"]["date"] and again["load_before"] == first["load_before"]
    (out / "fpn" / "compare.json").unlink()  # as if killed after fpn's training, before its evaluation
    comparison = compare_decoders(study["config"], out, ["unet", "fpn"], speed_images=4, n_boot=20)
    assert (out / "unet" / "compare.json").stat().st_mtime_ns == before["unet"]
    assert (out / "unet" / "disease" / "checkpoints" / "best.pt").stat().st_mtime_ns == ckpt
    assert (out / "fpn" / "compare.json").exists() and set(comparison["results"]) == {"unet", "fpn"}
    # another config in the same directory is refused rather than mixed in
    with pytest.raises(ConfigError, match="another config"):
        compare_decoders(study["config"], out, ["unet"], overrides=["seed=1"], speed_images=4)


def test_decoder_config_and_errors(study):
    cfg = load_severity_config(study["config"])
    assert [decoder_config(cfg, d, Path("x")).disease["arch"] for d in DECODERS] == list(DECODERS)
    with pytest.raises(ConfigError, match="unknown decoder"):
        decoder_config(cfg, "segformer", Path("x"))
    # a shallower shared encoder: U-Net-like decoders get one default width per stage, the others none
    shallow = cfg.model_copy(update={"disease": {**cfg.disease, "arch_kwargs": {"encoder_depth": 3,
                                                                                "decoder_channels": [8, 8, 8]}}})
    assert decoder_config(shallow, "manet", Path("x")).disease["arch_kwargs"] == {
        "encoder_depth": 3, "decoder_channels": [256, 128, 64]}
    assert decoder_config(shallow, "deeplabv3", Path("x")).disease["arch_kwargs"] == {"encoder_depth": 3}
    proc = subprocess.run([str(Path(sys.executable).parent / "cxrlab"), "severity", "compare", str(study["config"]),
                           "--out", str(study["out"].parent / "bad"), "--decoders", "unet,segformer"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "segformer" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


def test_page_can_be_written_into_docs(study, tmp_path):
    from cxrlab.severity.compare import write_comparison

    comparison = json.loads((study["out"] / "comparison.json").read_text())
    files = write_comparison(comparison, study["out"], tmp_path / "docs" / "decoders.md", command="cxrlab x")
    page = files["markdown"].read_text()
    assert files["plot"] == tmp_path / "docs" / "decoders.png" and files["plot"].exists()
    assert "Produced by `cxrlab x`" in page and "![decoders](decoders.png)" in page
    assert re.search(r"backend \S+, \d+ torch thread\(s\)", page)
    # a decoder that predicts nothing at the budget is named as such, not left as a bare row of zeros
    idle = json.loads(json.dumps(comparison))
    idle["results"]["unet"]["disease"].update(dice_mean=0.4, dice_pooled=0.5, iou_mean=0.3, iou_pooled=0.33)
    idle["results"]["fpn"]["disease"].update(dice_mean=0.0, dice_pooled=0.0, iou_mean=0.0, iou_pooled=0.0)
    page = write_comparison(idle, study["out"], tmp_path / "docs" / "idle.md")["markdown"].read_text()
    assert "Not trained enough at this budget: fpn found none" in page


def test_segmentation_cis_on_a_hand_made_table():
    from cxrlab.severity.evaluation import segmentation_cis

    pred = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c", "d"],
        "dice": [0.8, 0.6, 0.4, None, None], "iou": [0.6, 0.4, 0.25, None, None],
        "tp": [8, 6, 4, 0, 0], "n_pred": [10, 10, 10, 5, 0], "n_true": [10, 10, 10, 0, 0],
        "fp_area": [None, None, None, 0.05, 0.0], "fp_any": [None, None, None, True, False],
        "pred_zone_count": [3, 2, 1, 1, 0], "ref_zone_count": [2, 2, 2, 0, 0],
    })
    cis = segmentation_cis(pred, n_boot=50)
    assert cis["dice_mean"]["value"] == pytest.approx(0.6)
    assert cis["dice_pooled"]["value"] == pytest.approx(2 * 18 / 60)
    assert cis["iou_pooled"]["value"] == pytest.approx(18 / (60 - 18))
    assert cis["dice_mean"]["low"] <= 0.6 <= cis["dice_mean"]["high"]
    assert cis["fp_area_mean"]["value"] == pytest.approx(0.025) and cis["fp_any"]["value"] == pytest.approx(0.5)
    assert cis["zone_count_mae"]["value"] == pytest.approx(3 / 5) and cis["zone_count_mae"]["n"] == 5
    # the films with disease alone: |3-2| + |2-2| + |1-2| over 3
    assert cis["zone_count_mae_disease"]["value"] == pytest.approx(2 / 3) and cis["zone_count_mae_disease"]["n"] == 3
