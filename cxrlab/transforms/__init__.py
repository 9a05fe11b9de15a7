"""Dictionary transforms on sample dicts: the image and every mask move together, seeded randomness.

>>> t = Compose([ResizePadd(256), RandAffined(rotate=10), RandHFlipd(), CLAHEd("True_2_8"), ToTensord()], seed=0)
>>> out = t(sample)
"""

from cxrlab.transforms.base import TRANSFORMS, Compose, Transform, build_transforms, check_masks, mask_keys
from cxrlab.transforms.geometry import (
    CropToMaskd,
    HFlipd,
    RandAffined,
    RandHFlipd,
    ResizePadd,
    Resized,
    hflip_sample,
    undo_resize_pad,
)
from cxrlab.transforms.intensity import (
    CLAHEd,
    MinMaxd,
    Percentiled,
    RandGammad,
    UnsharpMaskd,
    ZScored,
    clahe,
    parse_histeq,
)
from cxrlab.transforms.tensor import ToTensord

__all__ = [
    "TRANSFORMS", "Compose", "Transform", "build_transforms", "check_masks", "mask_keys",
    "CropToMaskd", "HFlipd", "RandAffined", "RandHFlipd", "ResizePadd", "Resized", "hflip_sample",
    "undo_resize_pad", "CLAHEd", "MinMaxd", "Percentiled", "RandGammad", "UnsharpMaskd", "ZScored", "clahe",
    "parse_histeq", "ToTensord",
]
