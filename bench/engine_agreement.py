"""Do the engines ``fastest`` picks draw the masks PyTorch fp32 draws, on real films? → docs/benchmarks/engine_agreement.md

    .venv/bin/python bench/engine_agreement.py --lung runs/lung_bench --severity runs/severity256/run

``fastest`` judges a segmenter's engines on one phantom film when the model loads (mask Dice >= 0.98 against
fp32). This checks the choice where it matters: on the service benchmark's real images (drawn evenly from every
folder of ``../shared/data``, fixed seed), each mask the chosen engine returns against the same mask from
PyTorch fp32, per image; Stage II gets the fp32 lungs as its input in both, so only its own engine differs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrlab.anatomy.predict import LungSegmenter  # noqa: E402
from cxrlab.data import schema  # noqa: E402
from cxrlab.io import read_image_bytes  # noqa: E402
from cxrlab.machine import load_average, machine_info  # noqa: E402
from cxrlab.serve.benchmark import real_images  # noqa: E402
from cxrlab.severity.engine import stage_segmenter  # noqa: E402
from cxrlab.severity.pipeline import SeverityPipeline  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lung", type=Path, default=Path("runs/lung_bench"))
    ap.add_argument("--severity", type=Path, default=Path("runs/severity256/run"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/engine_agreement.md"))
    args = ap.parse_args()
    images = [read_image_bytes(d)[0] for _, d in real_images(args.data, args.images)]
    pipe = SeverityPipeline.from_run(args.severity, precision="fp32")
    lung_ref = stage_segmenter(pipe.lung, "torch-fp32")
    lung_fast = stage_segmenter(pipe.lung, "fastest")
    disease_ref = stage_segmenter(pipe.disease, "torch-fp32")
    disease_fast = stage_segmenter(pipe.disease, "fastest")
    scores: dict[str, list[float]] = {}
    # the pixels the engines disagree on, as a share of the fp32 lungs (a Dice of 0 on a 5-pixel mask is
    # not the same disagreement as on a lobe); and films where only one engine draws anything
    moved: dict[str, list[float]] = {}
    one_sided: dict[str, int] = {}

    def record(key: str, a: np.ndarray, b: np.ndarray, lung_px: int) -> None:
        scores.setdefault(key, []).append(dice(a, b))
        moved.setdefault(key, []).append(float(np.count_nonzero((a > 0) != (b > 0))) / max(lung_px, 1))
        one_sided[key] = one_sided.get(key, 0) + int(bool(np.any(a)) != bool(np.any(b)))

    for image in images:
        ref = lung_ref.predict(image)
        fast = lung_fast.predict(image)
        lungs = ref[schema.KEY_LUNG_MASK]
        lung_px = int(np.count_nonzero(lungs))
        for key in ref:
            record(f"lung stage: {key}", ref[key], fast[key], lung_px)
        d_ref = disease_ref.predict(image, lungs)[schema.KEY_DISEASE_MASK]
        d_fast = disease_fast.predict(image, lungs)[schema.KEY_DISEASE_MASK]
        record("disease stage: disease_mask", d_ref, d_fast, lung_px)
    chosen = {"lung stage": lung_fast.model.choice, "disease stage": disease_fast.model.choice}
    # what `fastest` judged each stage on: the masks fp32 draws on the segmenter's phantom sample
    sample_px = {}
    for name, seg in (("lung stage", pipe.lung), ("disease stage", pipe.disease)):
        with torch.no_grad():
            prob = torch.sigmoid(seg.model(seg.example_input()).float())
        sample_px[name] = (int((prob >= seg.config.threshold).sum()), float(prob.max()))
    lines = [
        "# Engine agreement on real films",
        "",
        f"Produced by `.venv/bin/python bench/engine_agreement.py --lung {args.lung} --severity {args.severity}` on "
        f"{len(images)} real images (the service benchmark's set); {machine_info()['cpu']}, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {load_average()}. Stage I draws "
        f"`{pipe.lung.convention or 'shared'}` lungs (the severity run's recorded output).",
        "",
        "Engines chosen by `fastest` when each model loaded (phantom film, mask Dice >= 0.98 vs fp32; see "
        "below): "
        + "; ".join(f"{k}: {c['chosen']} ({c['accepted'].get(c['chosen'], '')})" for k, c in chosen.items()) + ".",
        "",
        "On that phantom sample fp32 draws: " + "; ".join(
            f"{k} {px} mask pixels (largest probability {pmax:.2g})" for k, (px, pmax) in sample_px.items())
        + ". Where fp32 draws no pixel there, the sample cannot judge an engine: `fastest` then accepts fp32 "
        "engines, and int8 only on the real-image agreement its export recorded (the run's own training images; "
        "the films below are other hospitals' too).",
        "",
        "| mask | images | mean Dice vs fp32 | min | images below 0.98 | pixels that differ, % of lungs: median / max "
        "| images where only one engine draws the mask |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, values in scores.items():
        v, m = np.array(values), 100 * np.array(moved[key])
        lines.append(f"| {key} | {len(v)} | {v.mean():.4f} | {v.min():.4f} | {int((v < 0.98).sum())} | "
                     f"{np.median(m):.2f} / {m.max():.2f} | {one_sided[key]} |")
    lines += ["", "An image where both engines draw nothing counts as agreement (Dice 1). What this cannot show: "
              "agreement with fp32 is not accuracy. Against the ground truth, the severity page's \"Accuracy by "
              "inference engine\" table runs the same held-out test images on `fastest` and on PyTorch fp32 "
              "([severity.md](severity.md)); int8 engines (`cxrlab export RUN --int8`) move more edge pixels than "
              "bf16 ones, which is what the rows above show. The service's lung stage returns no heart mask.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
