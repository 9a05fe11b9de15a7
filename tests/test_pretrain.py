"""cxrlab pretrain on the phantom: loss goes down, resume is exact, masked losses ignore missing labels, the run
is a weight source for recipes, segmentation and embed, and the leakage guard refuses an overlapping backbone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxrlab.errors import ConfigError, InputError
from cxrlab.pretrain import load_pretrain_config, pretrain
from cxrlab.pretrain import losses as L

CXRLAB = str(Path(sys.executable).with_name("cxrlab"))


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory) -> Path:
    from cxrlab.data.phantom.generate import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("pre_phantom"), n_patients=10, size=64, seed=3, max_studies=3)


def _cfg(**over):
    base = {"backbone": "pasa_cnn", "weights": "none", "size": 64, "batch_size": 4, "epochs": 1, "lr": 3e-3,
            "warmup_steps": 0, "log_every": 1, "checkpoint_every": 2, "threads": 1, "bf16": "off"}
    sets = [f"{k}={v}" for k, v in {**base, **over}.items()]
    return load_pretrain_config("lite0-xray", sets)


@pytest.fixture(scope="module")
def lite0_run(small_phantom, tmp_path_factory) -> Path:
    """A finished Lite0 pretraining run (2 supervised steps): the weight source the consumer tests load."""
    out = tmp_path_factory.mktemp("pre_lite0") / "run"
    cfg = _cfg(backbone="efficientnet_lite0", epochs=0.5, **{"objectives.ssl.enabled": False})
    pretrain(cfg, [small_phantom], out, log=lambda m: None)
    return out


def test_masked_losses_ignore_missing_labels():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3, requires_grad=True), torch.randn(5, 2, requires_grad=True)]
    head = torch.tensor([0, 0, 1, 1, -1])
    target = torch.tensor([2, -1, 1, 0, -1])  # sample 1: head 0 but no label; sample 4: no head at all
    loss = L.masked_head_ce(logits, head, target)
    expected = (F.cross_entropy(logits[0][[0]], target[[0]]) + F.cross_entropy(logits[1][[2, 3]], target[[2, 3]])) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits[0].grad[[1, 4]].abs().sum() == 0 and logits[1].grad[[0, 1, 4]].abs().sum() == 0
    assert logits[0].grad[0].abs().sum() > 0
    # a batch in which no sample of a head is labelled: that term is absent, not a zero diluting the mean
    only0 = L.masked_head_ce(logits, torch.tensor([0, 0, 0, 0, 0]), torch.tensor([1, -1, -1, -1, -1]))
    assert torch.allclose(only0, F.cross_entropy(logits[0][[0]], torch.tensor([1])))
    assert L.masked_head_ce(logits, head, torch.full((5,), -1)) is None
    maps = torch.randn(3, 2, 4, 4, requires_grad=True)
    tgt = torch.rand(3, 2, 4, 4)
    have = torch.tensor([[1, 0], [0, 0], [1, 1]])
    seg = L.masked_bce_maps(maps, tgt, have)
    want = torch.stack([F.binary_cross_entropy_with_logits(maps[b, k], tgt[b, k]) for b, k in [(0, 0), (2, 0), (2, 1)]])
    assert torch.allclose(seg, want.mean())
    seg.backward()
    assert maps.grad[1].abs().sum() == 0 and maps.grad[0, 1].abs().sum() == 0


def test_pretraining_lowers_its_loss(small_phantom, tmp_path):
    out = pretrain(_cfg(epochs=8, **{"objectives.ssl.enabled": False}), [small_phantom], tmp_path / "run",
                   log=lambda m: None)
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) >= 16
    assert hist["loss"].tail(4).mean() < 0.7 * hist["loss"].head(4).mean()
    seen = pd.read_csv(out / "seen.csv", dtype=str)
    manifest = pd.read_csv(small_phantom, dtype=str)
    assert sorted(seen["patient_id"].unique()) == sorted(manifest["patient_id"].unique())
    assert {"image", "patient_id", "source_dataset", "diagnosis"} <= set(seen.columns)


def test_resume_is_exact(small_phantom, tmp_path):
    cfg = _cfg(epochs=2, **{"objectives.ssl.enabled": True, "objectives.ssl.hidden_dim": 32,
                            "objectives.ssl.projection_dim": 16})
    whole = pretrain(cfg, [small_phantom], tmp_path / "whole", log=lambda m: None)
    part = pretrain(cfg, [small_phantom], tmp_path / "part", log=lambda m: None, stop_after=3)
    assert not (part / "backbone.pt").exists()  # interrupted after step 3; the last checkpoint is step 2
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    with pytest.raises(InputError, match="--resume"):
        pretrain(cfg, [small_phantom], part, log=lambda m: None)
    pretrain(cfg, [small_phantom], part, resume=True, log=lambda m: None)
    a = torch.load(whole / "backbone.pt", weights_only=False)["state_dict"]
    b = torch.load(part / "backbone.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = pd.read_csv(whole / "history.csv"), pd.read_csv(part / "history.csv")
    assert np.allclose(pa["loss"].to_numpy(), pb["loss"].to_numpy(), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="config differs"):
        pretrain(_cfg(epochs=3), [small_phantom], part, resume=True, log=lambda m: None)


def test_exclusions_are_recorded(small_phantom, tmp_path):
    df = pd.read_csv(small_phantom, dtype=str)
    held = df[df["patient_id"].isin(sorted(df["patient_id"].unique())[:4])]
    held_path = tmp_path / "held.csv"
    held.assign(image=[str(small_phantom.parent / p) for p in held["image"]]).to_csv(held_path, index=False)
    out = pretrain(_cfg(epochs=0.5, **{"objectives.ssl.enabled": False}), [small_phantom], tmp_path / "run",
                   exclude_patients_of=[held_path], log=lambda m: None)
    seen = pd.read_csv(out / "seen.csv", dtype=str)
    assert not set(seen["patient_id"]) & set(held["patient_id"])
    assert len(seen) == len(df) - len(held)
    with pytest.raises(ConfigError, match="matches no source"):
        pretrain(_cfg(), [small_phantom], tmp_path / "run2", exclude_sources=["nosuch*"], log=lambda m: None)


def test_weight_source_loads_into_recipe_model(lite0_run):
    from cxrlab.models import create_model
    from cxrlab.models.backbones import get_backbone_entry

    saved = torch.load(lite0_run / "backbone.pt", weights_only=False)
    entry = get_backbone_entry("efficientnet_lite0")
    net, report = entry.create(in_chans=1, weights=f"run:{lite0_run}")
    assert not report.missing
    state = net.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())
    assert entry.normalization(1, f"run:{lite0_run}") == (tuple(saved["contract"]["mean"]),
                                                         tuple(saved["contract"]["std"]))
    with pytest.raises(ConfigError, match="pretrained efficientnet_lite0"):
        get_backbone_entry("resnet18").create(in_chans=1, weights=f"run:{lite0_run}")
    from cxrlab.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="not finished"):
        entry.create(in_chans=1, weights=f"run:{lite0_run.parent}")
    # a recipe's model (CxrNet), also with an image + lung-mask input: the first conv is adapted, the rest loads
    model, report = create_model("efficientnet_lite0", {"icu": 1}, in_chans=2, weights=f"run:{lite0_run}")
    assert report.adapted == ["conv_stem.weight"] and not report.missing
    assert torch.equal(model.backbone.net.state_dict()["blocks.3.0.conv_pw.weight"],
                       saved["state_dict"]["blocks.3.0.conv_pw.weight"])
    assert model(torch.rand(2, 2, 64, 64))["icu"].shape[0] == 2


def test_weight_source_loads_into_segmentation(lite0_run):
    from cxrlab.anatomy.architectures import create_segmentation_model
    from cxrlab.anatomy.config import SegmentationConfig

    SegmentationConfig(weights=f"run:{lite0_run}")
    saved = torch.load(lite0_run / "backbone.pt", weights_only=False)["state_dict"]
    net = create_segmentation_model("unet", "efficientnet_lite0", weights=f"run:{lite0_run}", in_channels=1,
                                    classes=2)
    enc = net.net.encoder.model.state_dict()
    shared = [k for k in enc if k in saved]
    assert len(shared) > 50 and all(torch.equal(enc[k], saved[k]) for k in shared)
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_weight_source_loads_into_embed(lite0_run, small_phantom, tmp_path):
    from cxrlab.retrieval import read_embeddings

    out = tmp_path / "emb.parquet"
    res = subprocess.run([CXRLAB, "embed", str(lite0_run), str(small_phantom), "--out", str(out),
                          "--precision", "fp32"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    emb = read_embeddings(out)
    assert emb.dim == 1280 and len(emb) == len(pd.read_csv(small_phantom))


def _table(small_phantom, weights: str, allow: bool = False):
    from cxrlab.data.manifest import load_manifest
    from cxrlab.recipes import load_recipe
    from cxrlab.train.data import build_table
    from cxrlab.train.inputs import InputPipeline
    from cxrlab.train.trainer import build_tasks

    sets = ["split.stratify=null", f"model.weights={weights}", f"model.allow_pretrain_overlap={str(allow).lower()}"]
    recipe = load_recipe("phantom-diagnosis", sets)
    pipeline = InputPipeline(recipe.input)
    return build_table(recipe, [load_manifest(small_phantom)], build_tasks(recipe, pipeline), pipeline.per_image)


def _fake_run(path: Path, patients: list[str]) -> Path:
    path.mkdir(parents=True)
    pd.DataFrame({"image": [f"/x/{p}.png" for p in patients], "patient_id": patients,
                  "source_dataset": "other"}).to_csv(path / "seen.csv", index=False)
    return path


def test_leakage_guard_refuses_overlap_and_accepts_disjoint(small_phantom, lite0_run, tmp_path):
    with pytest.raises(ConfigError, match="saw .* val/test patients"):
        _table(small_phantom, f"run:{lite0_run}")  # it saw every patient of the phantom
    table, _ = _table(small_phantom, f"run:{lite0_run}", allow=True)
    assert len(table.df)
    disjoint = _fake_run(tmp_path / "disjoint", ["PH999-0001", "PH999-0002"])
    table, _ = _table(small_phantom, f"run:{disjoint}")
    train_only = pd.read_csv(small_phantom, dtype=str)
    train_patients = sorted(set(table.df.loc[table.df["split"] == "train", "patient_id"]))
    held_patients = sorted(set(table.df.loc[table.df["split"] != "train", "patient_id"]))
    # a backbone that saw only this run's training patients is accepted; one more held-out patient refuses
    _table(small_phantom, f"run:{_fake_run(tmp_path / 'train_only', train_patients)}")
    with pytest.raises(ConfigError, match="saw 1 of"):
        _table(small_phantom, f"run:{_fake_run(tmp_path / 'one', train_patients + held_patients[:1])}")
    del train_only


def test_cli_errors_are_one_line(small_phantom, lite0_run, tmp_path):
    res = subprocess.run([CXRLAB, "train", "phantom-diagnosis", "--data", str(small_phantom), "--out",
                          str(tmp_path / "t"), "--set", f"model.weights=run:{lite0_run}", "--set",
                          "model.backbone=efficientnet_lite0", "--set", "split.stratify=null"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "allow_pretrain_overlap" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: 100\n")
    res = subprocess.run([CXRLAB, "pretrain", str(bad), "--data", str(small_phantom), "--out", str(tmp_path / "p")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "multiple of 32" in res.stderr and "Traceback" not in res.stderr


def _seg_config(manifest: Path, weights: str, **over) -> dict:
    return {"manifests": [str(manifest)], "size": 64, "arch": "unet", "encoder": "efficientnet_lite0",
            "weights": weights, "arch_kwargs": {"decoder_channels": [16, 8, 8, 8, 8]}, "epochs": 1,
            "batch_size": 4, "samples_per_epoch": 8, "val_max_images": 4, "threads": 1, "seed": 0, **over}


def test_segmentation_training_applies_the_guard(small_phantom, lite0_run, tmp_path):
    from cxrlab.anatomy import train_segmentation

    out = tmp_path / "seg"
    with pytest.raises(ConfigError, match="allow_pretrain_overlap: true"):
        train_segmentation(_seg_config(small_phantom, f"run:{lite0_run}"), out=out)
    assert not out.exists()  # refused before anything was written
    # the same backbone with a record of other patients only trains
    disjoint = tmp_path / "disjoint"
    shutil.copytree(lite0_run, disjoint)
    pd.read_csv(lite0_run / "seen.csv", dtype=str).assign(patient_id="PH999-0001", image="/x/other.png") \
        .to_csv(disjoint / "seen.csv", index=False)
    run = train_segmentation(_seg_config(small_phantom, f"run:{disjoint}"), out=tmp_path / "seg2")
    assert (run / "checkpoints" / "best.pt").is_file()
    with pytest.raises(ConfigError, match="allow_pretrain_overlap: true"):
        train_segmentation(_seg_config(small_phantom, f"run:{lite0_run}"), out=tmp_path / "seg3")


def test_embeddings_carry_the_guard_to_heads(lite0_run, small_phantom, tmp_path):
    from cxrlab.retrieval import embed, read_embeddings
    from cxrlab.train.embedding_head import HeadConfig, cross_validate_head

    emb = read_embeddings(embed(lite0_run, small_phantom, tmp_path / "emb.parquet", precision="fp32"))
    assert (emb.meta["seen_in_pretraining"] == 1.0).all()  # the run saw every phantom patient
    meta = emb.meta.assign(label=np.arange(len(emb)) % 2)
    with pytest.raises(ConfigError, match="saw .* patient"):
        cross_validate_head(emb.vectors, meta, "label", k=2, stratify=False)
    # the same vectors pass once the patients are marked unseen (a backbone pretrained without them)
    oof = cross_validate_head(emb.vectors, meta.assign(seen_in_pretraining=0.0), "label", k=2, stratify=False,
                              cfg=HeadConfig(epochs=2, hidden=0))
    assert len(oof) == len(meta)
    # an ImageNet backbone's vectors carry no mark at all
    plain = read_embeddings(embed("efficientnet_lite0", small_phantom, tmp_path / "plain.parquet", precision="fp32"))
    assert "seen_in_pretraining" not in plain.meta.columns
