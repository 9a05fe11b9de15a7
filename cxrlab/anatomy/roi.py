"""ROI schemes: how a training recipe turns a sample with lung masks into model input(s), chosen by name.

``ROI_SCHEMES.create("lung", margin=0.05)(sample) -> [sample_right, sample_left]``. Every scheme returns a list
of samples (one per image, or one per side with ``meta["side"]`` set) and declares in its registry entry how
many it yields per image (``per_image``) and the model's input channels (``in_channels``).

- ``none``: the image as it is.
- ``lung``: one lung per sample, the image masked to that lung and cropped to it (the opacity grader).
- ``midline``: one half of the chest per sample, split at the midline (the "spine" scheme); masks are split
  with the image.
- ``lungs``: both lungs masked (outside set to 0), cropped to the two lungs.
- ``image+mask``: a 2-channel image ``[image, lung mask]`` as in the ICU paper.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cxrlab.anatomy.geometry import estimate_midline, split_halves
from cxrlab.data import schema
from cxrlab.errors import InputError
from cxrlab.registry import Registry
from cxrlab.transforms import CropToMaskd
from cxrlab.transforms.base import source_of

Sample = dict[str, Any]
RoiScheme = Callable[[Sample], list[Sample]]
ROI_SCHEMES: Registry[Callable[..., RoiScheme]] = Registry("ROI scheme")


def lung_masks(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``(patient_right, patient_left)`` from the sample; a clear error if the sample has none."""
    r, l = sample.get(schema.KEY_RIGHT_MASK), sample.get(schema.KEY_LEFT_MASK)
    if r is None or l is None:
        lungs = sample.get(schema.KEY_LUNG_MASK)
        if lungs is None:
            raise InputError(source_of(sample), "this ROI scheme needs lung masks; give a mask column or "
                             "predict them with a lung model (--lung-model RUN)", field=schema.KEY_RIGHT_MASK)
        from cxrlab.anatomy.postprocess import split_lungs

        r, l = split_lungs(np.asarray(lungs))
    return np.asarray(r, dtype=np.uint8), np.asarray(l, dtype=np.uint8)


def _with(sample: Sample, **changes: Any) -> Sample:
    out = dict(sample)
    out[schema.KEY_META] = dict(sample.get(schema.KEY_META) or {})
    for k, v in changes.items():
        if k == "side":
            out[schema.KEY_META]["side"] = v
        else:
            out[k] = v
    return out


@ROI_SCHEMES.register("none", per_image=1, in_channels=1)
def roi_none() -> RoiScheme:
    return lambda sample: [sample]


@ROI_SCHEMES.register("lung", per_image=2, in_channels=1)
def roi_lung(margin: float = 0.05) -> RoiScheme:
    crop = CropToMaskd("roi_mask", margin=margin)

    def apply(sample: Sample) -> list[Sample]:
        r, l = lung_masks(sample)
        out = []
        for side, m in (("patient_right", r), ("patient_left", l)):
            if not m.any():
                raise InputError(source_of(sample), f"{side} lung mask is empty", field=f"{side}_mask")
            s = _with(sample, side=side, roi_mask=m)
            s[schema.KEY_IMAGE] = np.where(m > 0, s[schema.KEY_IMAGE], 0).astype(np.float32)
            s = crop(s)
            del s["roi_mask"]
            out.append(s)
        return out

    return apply


@ROI_SCHEMES.register("midline", per_image=2, in_channels=1)
def roi_midline(mirror_left: bool = False) -> RoiScheme:
    def apply(sample: Sample) -> list[Sample]:
        r, l = lung_masks(sample)
        midline = estimate_midline(r, l)
        halves = split_halves(np.asarray(sample[schema.KEY_IMAGE]), midline, mirror_left)
        # masks are cut like the image, so each half keeps the lungs in its own frame (heatmap concordance
        # needs them whatever the ROI); the other side's pixels are 0 in the half, so its lung drops out
        masks = {k: split_halves(np.asarray(v), midline, mirror_left) for k, v in sample.items()
                 if k.endswith("_mask") and v is not None}
        return [_with(sample, side=side, image=halves[side], **{k: m[side] for k, m in masks.items()})
                for side in ("patient_right", "patient_left")]

    return apply


@ROI_SCHEMES.register("lungs", per_image=1, in_channels=1)
def roi_lungs(margin: float = 0.05, crop: bool = True) -> RoiScheme:
    cropper = CropToMaskd("roi_mask", margin=margin)

    def apply(sample: Sample) -> list[Sample]:
        r, l = lung_masks(sample)
        both = (r | l).astype(np.uint8)
        if not both.any():
            raise InputError(source_of(sample), "lung masks are empty", field=schema.KEY_LUNG_MASK)
        s = _with(sample, roi_mask=both)
        s[schema.KEY_IMAGE] = np.where(both > 0, s[schema.KEY_IMAGE], 0).astype(np.float32)
        if crop:
            s = cropper(s)
        del s["roi_mask"]
        return [s]

    return apply


@ROI_SCHEMES.register("image+mask", per_image=1, in_channels=2)
def roi_image_mask() -> RoiScheme:
    def apply(sample: Sample) -> list[Sample]:
        r, l = lung_masks(sample)
        image = np.asarray(sample[schema.KEY_IMAGE], dtype=np.float32)
        if image.shape != r.shape:
            raise InputError(source_of(sample), f"lung mask {r.shape} differs from image {image.shape}",
                             field=schema.KEY_LUNG_MASK)
        return [_with(sample, image=np.stack([image, (r | l).astype(np.float32)]))]

    return apply
