"""Mask post-processing: largest connected component, hole filling, anatomical left/right assignment.

Left/right are the patient's: the patient's right lung lies on the image's LEFT in a PA/AP view. Sides are
decided from where each lung lies, not from which output channel produced it, so a model that swaps its
channels (e.g. on a mirrored film) is corrected.
"""

from __future__ import annotations

import cv2
import numpy as np


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 8-connected components: ``(labels, areas)`` with ``areas[i]`` for label ``i + 1``."""
    labels, areas, _ = _components_with_centroids(mask)
    return labels, areas


def _components_with_centroids(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, areas, centroid columns)``, index ``i`` for label ``i + 1``."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, dtype=np.uint8),
                                                                   connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA], centroids[1:, 0]


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, areas = components(mask)
    if len(areas) == 0:
        return np.zeros_like(mask, dtype=np.uint8)
    return (labels == int(np.argmax(areas)) + 1).astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the border (as ``scipy.ndimage.binary_fill_holes``).

    A flood fill from a one-pixel frame with OpenCV gives the same result ~14x faster, which matters in the
    post-processing of every predicted mask.
    """
    filled = np.pad(mask.astype(np.uint8) > 0, 1).astype(np.uint8)
    h, w = filled.shape
    flood = filled.copy()
    cv2.floodFill(flood, np.zeros((h + 2, w + 2), np.uint8), (0, 0), 1, flags=4)
    holes = flood == 0  # background the border flood could not reach
    filled[holes] = 1
    return filled[1:-1, 1:-1]


def clean(mask: np.ndarray) -> np.ndarray:
    """Largest component with holes filled (one lung, heart)."""
    return fill_holes(largest_component(mask))


def centroid_x(mask: np.ndarray) -> float | None:
    """Mean column of the mask's pixels (None when empty); image moments, ~10x faster than listing the pixels."""
    mask = np.asarray(mask)
    m = cv2.moments(np.ascontiguousarray(mask if mask.dtype == np.uint8 else (mask > 0).astype(np.uint8)),
                    binaryImage=True)
    return float(m["m10"] / m["m00"]) if m["m00"] else None


def split_lungs(lungs: np.ndarray, min_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split a two-lung mask into ``(patient_right, patient_left)`` by its two largest components.

    The component on the image's left is the patient's right lung. One component only (touching lungs, or one
    lung missing): it is cut at the image's vertical centre line.
    """
    labels, areas = components(lungs)
    zero = np.zeros(lungs.shape, dtype=np.uint8)
    if len(areas) == 0:
        return zero, zero.copy()
    order = np.argsort(areas)[::-1]
    keep = [i for i in order[:2] if areas[i] >= min_fraction * areas[order[0]]]
    if len(keep) == 2:
        a, b = ((labels == i + 1).astype(np.uint8) for i in keep)
        return (a, b) if centroid_x(a) < centroid_x(b) else (b, a)
    comp = (labels == keep[0] + 1).astype(np.uint8)
    half = lungs.shape[1] // 2
    right, left = comp.copy(), comp.copy()
    right[:, half:] = 0
    left[:, :half] = 0
    return right, left


def assign_lungs(prob_right: np.ndarray, prob_left: np.ndarray, threshold: float = 0.5,
                 min_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Turn two lung probability maps into clean ``(patient_right, patient_left)`` masks.

    1. Union of both channels; if it has two substantial components, each is one lung and the image-left
       one is the patient's right (whatever channel it came from).
    2. Otherwise (lungs touch, or one lung only) pixels go to the more probable channel; each side keeps its
       largest component, holes filled, and the pair is swapped if it lies the wrong way round.
    """
    right = prob_right >= threshold
    left = prob_left >= threshold
    union = fill_holes(right | left)
    labels, areas, centre_x = _components_with_centroids(union)
    if len(areas) == 0:
        zero = np.zeros(union.shape, dtype=np.uint8)
        return zero, zero.copy()
    order = np.argsort(areas)[::-1]
    keep = [i for i in order[:2] if areas[i] >= min_fraction * areas[order[0]]]
    if len(keep) == 2:
        # components of a hole-free mask have no holes (8-connected lungs, 4-connected background), and their
        # centroids come with the labels: no second fill or pass over the pixels
        a, b = ((labels == i + 1).astype(np.uint8) for i in keep)
        return (a, b) if centre_x[keep[0]] < centre_x[keep[1]] else (b, a)
    comp = labels == keep[0] + 1
    r = clean(comp & (prob_right >= prob_left))
    l = clean(comp & (prob_left > prob_right))
    if r.sum() < min_fraction * comp.sum():
        r = np.zeros_like(r)
    if l.sum() < min_fraction * comp.sum():
        l = np.zeros_like(l)
    cr, cl = centroid_x(r), centroid_x(l)
    if cr is not None and cl is not None and cr > cl:
        r, l = l, r
    elif (cr is None) != (cl is None):  # one lung only: its side is where it lies in the image
        only = r if cl is None else l
        if centroid_x(only) < union.shape[1] / 2:
            r, l = only, np.zeros_like(only)
        else:
            r, l = np.zeros_like(only), only
    r[l.astype(bool)] = 0
    return r.astype(np.uint8), l.astype(np.uint8)
