"""Backbones with their preprocessing contract and offline weight sources, and the ``CxrNet`` model.

>>> model, report = create_model("efficientnet_lite0", {"diagnosis": 3}, in_chans=1, weights="imagenet")
>>> get_backbone_entry("efficientnet_lite0").cam_target_layers(model)
"""

from cxrlab.errors import WeightsNotFoundError
from cxrlab.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneEntry,
    get_backbone_entry,
    list_backbones,
    register_backbone,
)
from cxrlab.models.network import CxrNet, create_model
from cxrlab.models.weights import LoadReport, WeightSource, match_state_dict, read_checkpoint

__all__ = [
    "BACKBONES", "Backbone", "BackboneEntry", "CxrNet", "LoadReport", "WeightSource", "WeightsNotFoundError",
    "create_model", "get_backbone_entry", "list_backbones", "match_state_dict", "read_checkpoint",
    "register_backbone",
]
