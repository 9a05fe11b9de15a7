"""Grad-CAM galleries and heatmap concordance (HCS) per fine-tuned arm: each fold's run explains its own test
films (``cxrlab.explain.run.explain_images``), so every film is explained by the model that never trained on
it; the gallery shows the same films for every arm."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.splits import SPLIT


def explain_arm(arm_dir: str | os.PathLike, split_files: Sequence[Path], data: str | os.PathLike,
                out: str | os.PathLike, images: Sequence[str] | None = None) -> pd.DataFrame:
    """``image, fold, hcs, overlay`` for every test film of every fold, or only those in ``images`` (skipped when
    ``fold<i>/explain.json`` exists)."""
    from cxrlab.explain.run import explain_images

    out = Path(out)
    rows = []
    for fold, split in enumerate(split_files):
        target = out / f"fold{fold}"
        if not (target / "explain.json").is_file():
            s = pd.read_csv(split, dtype={schema.PATIENT_ID: str})
            test = s.loc[s[SPLIT] == "test", schema.IMAGE].astype(str)
            if images is not None:
                test = test[test.isin(set(map(str, images)))]
            explain_images(Path(arm_dir) / f"fold{fold}", test.tolist(), target, data=data)
        for r in json.loads((target / "explain.json").read_text())["images"]:
            rows.append({schema.IMAGE: str(Path(r["image"]).resolve()), "fold": fold, "hcs": r["hcs"],
                         "overlay": str(target / r["overlay"])})
    return pd.DataFrame(rows)


def gallery_png(overlays: dict[str, pd.DataFrame], images: Sequence[str], titles: dict[str, str],
                out: str | os.PathLike, captions: dict[str, str] | None = None) -> Path:
    """One row per arm, one column per film (the same films for every arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    arms = list(overlays)
    fig, axes = plt.subplots(len(arms), len(images), figsize=(2.0 * len(images), 2.2 * len(arms)), squeeze=False)
    for r, arm in enumerate(arms):
        by_image = overlays[arm].set_index(schema.IMAGE)
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.axis("off")
            if image in by_image.index:
                row = by_image.loc[image]
                ax.imshow(np.asarray(Image.open(row["overlay"]).convert("RGB")))
                ax.set_title(f"HCS {row['hcs']:.2f}", fontsize=7)
            if c == 0:
                ax.text(-0.05, 0.5, titles.get(arm, arm), transform=ax.transAxes, rotation=90, ha="right",
                        va="center", fontsize=7)
            if r == 0 and captions:
                ax.text(0.5, 1.18, captions.get(image, ""), transform=ax.transAxes, ha="center", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
