"""Lung anatomy: segmentation models (smp), patient-left/right lungs, midline, lung zones, ROI schemes, biomarkers.

>>> run = train_segmentation(load_config("lung.yaml", ["epochs=5"]))
>>> seg = LungSegmenter.from_run(run)
>>> masks = seg.predict(image)    # patient_right_mask, patient_left_mask, lung_mask, heart_mask
>>> zones = lung_zones(masks["patient_right_mask"], masks["patient_left_mask"], strategy="equal_area")
"""

from cxrlab.anatomy.architectures import ARCHITECTURES, ENCODERS, SegmentationNet, create_segmentation_model
from cxrlab.anatomy.biomarkers import lung_biomarkers
from cxrlab.anatomy.config import SegmentationConfig, load_config
from cxrlab.anatomy.evaluate import evaluate_segmenter
from cxrlab.anatomy.geometry import Midline, estimate_midline, lung_zones, split_halves
from cxrlab.anatomy.metrics import dice, hd95, jaccard, mask_metrics
from cxrlab.anatomy.postprocess import assign_lungs, fill_holes, largest_component, split_lungs
from cxrlab.anatomy.predict import LungSegmenter
from cxrlab.anatomy.roi import ROI_SCHEMES, lung_masks
from cxrlab.anatomy.train import DiceBCELoss, train_segmentation

__all__ = [
    "ARCHITECTURES", "ENCODERS", "SegmentationNet", "create_segmentation_model", "lung_biomarkers",
    "SegmentationConfig", "load_config", "evaluate_segmenter", "Midline", "estimate_midline", "lung_zones",
    "split_halves", "dice", "hd95", "jaccard", "mask_metrics", "assign_lungs", "fill_holes",
    "largest_component", "split_lungs", "LungSegmenter", "ROI_SCHEMES", "lung_masks", "DiceBCELoss",
    "train_segmentation",
]
