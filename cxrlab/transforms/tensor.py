"""Conversion of a sample's arrays to torch tensors (image channel-first)."""

from __future__ import annotations

import numpy as np

from cxrlab.data import schema
from cxrlab.transforms.base import TRANSFORMS, Sample, Transform, mask_keys


@TRANSFORMS.register("to_tensor")
class ToTensord(Transform):
    """Image → float32 tensor ``C×H×W`` (a grey ``H×W`` image gets ``C=1``); masks → uint8 tensors ``H×W``."""

    def apply(self, sample: Sample, rng) -> Sample:
        import torch  # transforms stay importable without torch for numpy-only users

        image = np.asarray(sample[schema.KEY_IMAGE], dtype=np.float32)
        if image.ndim == 2:
            image = image[None]
        sample[schema.KEY_IMAGE] = torch.from_numpy(np.ascontiguousarray(image))
        for key in mask_keys(sample):
            sample[key] = torch.from_numpy(np.ascontiguousarray(np.asarray(sample[key], dtype=np.uint8)))
        return sample
