"""On the chest phantom (disease drawn only inside the lungs), a model that learned the diagnosis looks
inside the lungs: its macro HCS is clearly above that of the same network untrained."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from cxrlab.data import schema
from cxrlab.explain import heatmap, heatmap_concordance, macro_hcs, target_layers_for

SIZE = 32  # the phantom's lesions are still visible; keeps training to seconds on a shared CPU


def _load(path: str, mask: bool = False) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_AREA)
    return (small > 127).astype(np.uint8) if mask else small.astype(np.float32) / 255


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(schema.FINDINGS)))


def _macro_hcs(model: nn.Module, x: torch.Tensor, masks: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    heat, _ = heatmap(model, x, "gradcam", target_layers_for(model, x[:1]))
    # mass: the paper's pixel count (the default) is near the lungs' share of the image for any smooth CAM,
    # trained or not (0.26 vs 0.26 here), so it cannot show the trained model looking at the lungs
    scores = [heatmap_concordance(h, m, definition="mass") for h, m in zip(heat, masks)]
    return macro_hcs(scores, y)["macro"]


def test_trained_model_concentrates_heatmap_in_lungs(phantom_manifest):
    torch.set_num_threads(1)
    df = phantom_manifest.df
    x = torch.from_numpy(np.stack([_load(p) for p in df[schema.IMAGE]])[:, None])
    x = (x - x.mean()) / x.std()
    masks = np.stack([_load(p, mask=True) for p in df[schema.MASK_LUNGS]])
    y = df[schema.FINDING].map({f: i for i, f in enumerate(schema.FINDINGS)}).to_numpy().copy()

    untrained = _macro_hcs(_net(), x, masks, y)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    target = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):
        for idx in torch.randperm(len(x), generator=gen).split(8):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), target[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == target).float().mean().item()
    assert accuracy > 0.5, f"the phantom diagnosis was not learned (accuracy {accuracy:.2f}; chance 0.25)"
    trained = _macro_hcs(model, x, masks, y)
    chance = float(masks.mean())  # HCS of a heatmap that ignores anatomy
    assert trained > untrained + 0.1, (trained, untrained)
    assert trained > chance, (trained, chance)
