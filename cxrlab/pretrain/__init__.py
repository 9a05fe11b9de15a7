"""X-ray pretraining of a registry backbone on the user's own radiographs (issue #15).

>>> cfg = load_pretrain_config("lite0-xray")
>>> pretrain(cfg, ["data/a/manifest.csv", "data/b/manifest.csv"], "runs/pre", exclude_sources=["ieee8023*"])

The finished run is a weight source, ``weights: run:runs/pre``, for recipes, segmentation configs and
``cxrlab embed``; :mod:`cxrlab.pretrain.guard` refuses it downstream when it saw a val/test patient.
"""

from cxrlab.pretrain.config import PretrainConfig, load_pretrain_config, shipped_configs
from cxrlab.pretrain.runner import pretrain

__all__ = ["PretrainConfig", "load_pretrain_config", "pretrain", "shipped_configs"]
