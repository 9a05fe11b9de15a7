"""Pooled features of a frozen registry backbone: the representation every quality check reads."""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from cxrlab.models import get_backbone_entry


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Grey float image → ``size`` x ``size`` (area filter when shrinking; aspect is not kept, as for training)."""
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=interp)


class FeatureExtractor:
    """``extractor(images) -> (N, F)`` float32 pooled features; images are float32 HxW in [0, 1]."""

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str = "imagenet", size: int = 224,
                 batch_size: int = 32):
        entry = get_backbone_entry(backbone)
        self.net, _ = entry.create(in_chans=1, weights=weights)
        self.net.eval()
        mean, std = entry.normalization(1, weights)
        self.mean, self.std = float(mean[0]), float(std[0])
        self.size, self.batch_size = size, batch_size
        self.num_features = self.net.num_features

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], on_batch: Callable[[int], None] | None = None,
                 invert: bool = False) -> np.ndarray:
        """Features of ``images`` (of their negatives ``1 - image`` with ``invert``, without copying them)."""
        out = np.zeros((len(images), self.num_features), np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = torch.from_numpy(np.stack([square(im, self.size) for im in chunk])[:, None])
            if invert:
                x = 1.0 - x
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            out[start:start + len(chunk)] = self.net(x).float().numpy()
            if on_batch is not None:
                on_batch(len(chunk))
        return out
