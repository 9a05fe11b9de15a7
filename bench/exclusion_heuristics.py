"""How often the pixel heuristics of cxrlab.data.exclusions fire on real radiographs.

    .venv/bin/python bench/exclusion_heuristics.py [--data ../shared/data] [--per-folder 250] [--seed 0]

Samples frontal (non-lateral) images of every shared folder; counts `inverted_like` and `document_like` on
the images as they are (all normal polarity, none a document: every hit is a false positive) and on their
inverted copies (every `inverted_like` hit is a true detection).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlab.data.exclusions import document_like, inverted_like  # noqa: E402
from cxrlab.io import read_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--per-folder", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for folder in sorted(p for p in args.data.iterdir() if (p / "manifest.csv").is_file()):
        df = pd.read_csv(folder / "manifest.csv", low_memory=False)
        if "view" in df.columns:
            df = df[df["view"] != "L"]
        images = rng.sample(sorted(df["image"]), min(args.per_folder, len(df)))
        counts = {"folder": folder.name, "images": len(images), "inverted_fp": 0, "inverted_detected": 0,
                  "document_fp": 0}
        for name in images:
            image, _ = read_image(folder / name)
            counts["inverted_fp"] += inverted_like(image)
            counts["inverted_detected"] += inverted_like(1.0 - image)
            counts["document_fp"] += document_like(image)
        rows.append(counts)
    table = pd.DataFrame(rows)
    total = table.drop(columns="folder").sum()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, load {os.getloadavg()[0]:.2f}, seed {args.seed}")
    print(table.to_string(index=False))
    print(f"total: {total['images']} frontal images; inverted flagged {total['inverted_fp']} "
          f"({100 * total['inverted_fp'] / total['images']:.1f} %), inverted copies detected "
          f"{total['inverted_detected']} ({100 * total['inverted_detected'] / total['images']:.1f} %), "
          f"document false positives {total['document_fp']}")


if __name__ == "__main__":
    main()
