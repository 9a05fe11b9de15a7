"""Explanation: CAM methods by name (pytorch-grad-cam), CAM from the forward pass for a GAP + linear head
(``forward_cam``, equal to Grad-CAM there), the opacity paper's probability-weighted heatmap,
the Heatmap Concordance Score (share of the heatmap's salient pixels inside the lungs; definitions by name in
``HCS_DEFINITIONS``) and overlay PNGs."""

from cxrlab.explain.cams import CAM_METHODS, compute_cam, list_cam_methods
from cxrlab.explain.forward import forward_cam, forward_heatmap
from cxrlab.explain.hcs import (DEFAULT_DEFINITION, DEFAULT_THRESHOLD, HCS_DEFINITIONS, heatmap_concordance,
                                lung_fraction, macro_hcs)
from cxrlab.explain.heatmap import OutputTarget, heatmap, per_lung_heatmap, probability_weighted_heatmap
from cxrlab.explain.layers import auto_target_layer, resolve_layer, target_layers_for
from cxrlab.explain.overlay import overlay, save_overlay

__all__ = ["CAM_METHODS", "DEFAULT_DEFINITION", "DEFAULT_THRESHOLD", "HCS_DEFINITIONS", "OutputTarget",
           "auto_target_layer", "compute_cam", "forward_cam", "forward_heatmap", "heatmap", "heatmap_concordance", "list_cam_methods", "lung_fraction", "macro_hcs", "overlay",
           "per_lung_heatmap", "probability_weighted_heatmap", "resolve_layer", "save_overlay",
           "target_layers_for"]
