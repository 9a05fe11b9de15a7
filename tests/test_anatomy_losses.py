"""The segmentation trainer's ``loss`` key: bce_dice (default, unchanged), dice, tversky, focal (smp's losses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrlab.anatomy import load_config
from cxrlab.anatomy.losses import LOSS_NAMES, DiceBCELoss, LossConfig, SmpLoss, build_loss
from cxrlab.errors import ConfigError

torch.set_num_threads(1)

# (loss config, what build_loss returns)
TEST_CASES = [
    ["bce_dice", DiceBCELoss],
    ["dice", SmpLoss],
    [{"name": "tversky", "alpha": 0.2, "beta": 0.8}, SmpLoss],
    [{"name": "tversky", "gamma": 1.5, "bce_weight": 0.5}, SmpLoss],
    ["focal", SmpLoss],
    [{"name": "focal", "alpha": 0.25, "gamma": 1.0, "bce_weight": 1.0}, SmpLoss],
    [{"name": "dice", "bce_weight": 1.0, "smooth": 1.0}, SmpLoss],
]


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x N×1×H×W, two target channels (a blob and a small 'lesion'), weights with one channel unsupervised on
    one image and an ignored band (like SCR's retrocardiac region) on another."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 16, 16, generator=g)
    y = torch.zeros(4, 2, 16, 16)
    y[:, 0, 4:12, 3:10] = 1
    y[:, 1, 6:9, 8:11] = 1
    x = x + y.sum(1, keepdim=True)
    w = torch.ones_like(y)
    w[1, 1] = 0          # image 1 has no mask for channel 1
    w[2, 0, :, 12:] = 0  # image 2: band not supervised in channel 0
    return x, y, w


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))


@pytest.mark.parametrize("spec,kind", TEST_CASES)
def test_each_loss_is_selectable_finite_and_decreases(spec, kind):
    cfg = load_config({"loss": spec})
    loss_fn = build_loss(cfg.loss)
    assert isinstance(loss_fn, kind)
    x, y, w = batch()
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = loss_fn(model(x), y, w)
        assert torch.isfinite(loss) and loss.ndim == 0
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(loss_fn(model(x), y, w)) < 0.8 * first


def test_default_is_the_unchanged_bce_dice():
    cfg = load_config({})
    assert cfg.loss.name == "bce_dice" and type(build_loss(cfg.loss)) is DiceBCELoss
    from cxrlab.anatomy.train import DiceBCELoss as FromTrain  # the old import path still works
    assert FromTrain is DiceBCELoss
    x, y, w = batch()
    logits = tiny_model()(x).detach()
    # the hand value of the original formula: weighted BCE + mean per-(image, channel) soft Dice (eps 1)
    bce = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
    p, t = torch.sigmoid(logits) * w, y * w
    d = 1 - (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    sup = (w.sum((2, 3)) > 0).float()
    expected = bce + (d * sup).sum() / sup.sum()
    assert float(build_loss(cfg.loss)(logits, y, w)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "bce_dice"])
def test_unsupervised_pixels_do_not_count(name):
    loss_fn = build_loss(name)
    x, y, w = batch()
    logits = tiny_model()(x).detach()
    other = logits.clone()
    other[w == 0] = torch.randn(int((w == 0).sum())) * 10  # anything where nothing is supervised
    assert float(loss_fn(logits, y, w)) == pytest.approx(float(loss_fn(other, y, w)), rel=1e-6)
    assert float(loss_fn(logits, y, torch.zeros_like(w))) == 0.0  # nothing supervised: no loss, no NaN


def test_tversky_options_reach_smp():
    x, y, w = batch()
    logits = tiny_model()(x).detach()
    dice = float(build_loss("dice")(logits, y, w))
    assert float(build_loss({"name": "tversky", "alpha": 0.5, "beta": 0.5})(logits, y, w)) == pytest.approx(dice)
    # a prediction that misses the lesions: weighing false negatives more gives the larger loss
    missing = torch.full_like(logits, -4.0)
    fn_heavy = float(build_loss({"name": "tversky", "alpha": 0.1, "beta": 0.9})(missing, y, w))
    fp_heavy = float(build_loss({"name": "tversky", "alpha": 0.9, "beta": 0.1})(missing, y, w))
    assert fn_heavy > fp_heavy
    assert LossConfig(name="tversky").option("beta") == 0.7


@pytest.mark.parametrize("spec,match", [
    ("focal_dice", "unknown loss 'focal_dice'; choose one of bce_dice, dice, tversky, focal"),
    ({"name": "focal", "beta": 0.5}, "loss 'focal' has no option 'beta'"),
    ({"name": "bce_dice", "gamma": 2}, "loss 'bce_dice' has no option 'gamma'"),
    ({"name": "focal", "alpha": 1.5}, "focal alpha must be in"),
    ({"name": "tversky", "alpha": -1}, "greater than or equal to 0"),
    ({"name": "dice", "weight": 1}, "Extra inputs"),
])
def test_bad_loss_is_a_config_error(spec, match):
    with pytest.raises(ConfigError, match="invalid segmentation config: loss") as exc:
        load_config({"loss": spec})
    assert match in str(exc.value)


def test_overrides_and_the_installed_cli():
    assert load_config(None, ["loss=focal"]).loss.name == "focal"
    cfg = load_config(None, ["loss.name=tversky", "loss.beta=0.9"])
    assert (cfg.loss.option("alpha"), cfg.loss.option("beta")) == (0.3, 0.9)
    res = subprocess.run([str(Path(sys.executable).parent / "cxrlab"), "segment", "train", "--set", "loss=lovasz"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "unknown loss 'lovasz'" in res.stdout + res.stderr
