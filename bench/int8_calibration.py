"""What int8 calibration needs, and why classifiers are left in fp32 → docs/benchmarks/int8_calibration.md

    .venv/bin/python bench/int8_calibration.py --severity runs/severity256/run --diagnosis runs/diag256

For each segmentation network of the severity run (its Stage I lungs and its disease model), int8 graphs are calibrated
(``cxrlab.export.quantize.quantize_int8``, as ``cxrlab export RUN --int8`` does) on three sets: one phantom film,
six phantom films, and 16 of the run's own training images; each graph's masks are then compared with PyTorch
fp32's on the service benchmark's real films (the calibration images are never among them). For the diagnosis
classifier, the share of those films whose top class changes under OpenVINO bf16 (the engine ``fastest`` refuses
for it). Accuracy only, no timing: it may run while the machine does other work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrlab.anatomy.predict import LungSegmenter  # noqa: E402
from cxrlab.data import schema  # noqa: E402
from cxrlab.data.phantom import render_sample  # noqa: E402
from cxrlab.export import create_backend, export_run  # noqa: E402
from cxrlab.export.onnx import fresh_onnx  # noqa: E402
from cxrlab.export.quantize import quantize_int8  # noqa: E402
from cxrlab.export.runs import _dice_by_channel, calibration_images  # noqa: E402
from cxrlab.io import read_image, read_image_bytes  # noqa: E402
from cxrlab.machine import load_average, machine_info  # noqa: E402
from cxrlab.serve.benchmark import real_images  # noqa: E402
from cxrlab.serve.stages import create_stage  # noqa: E402
from cxrlab.severity.pipeline import SeverityPipeline  # noqa: E402

PHANTOMS = [("covid19", 0.5), ("covid19", 0.2), ("covid19", 0.8), ("viral", 0.5), ("bacterial", 0.5), ("normal", 0.0)]


def phantom_inputs(seg: LungSegmenter, n: int) -> np.ndarray:
    size = max(seg.config.size, 64)
    films = [render_sample(f, severity=s, size=size, seed=i) for i, (f, s) in enumerate(PHANTOMS[:n])]
    lungs = [f[schema.KEY_LUNG_MASK] for f in films] if seg.in_channels == 2 else None
    return seg.network_inputs([f[schema.KEY_IMAGE] for f in films], lungs)


def agreement(seg: LungSegmenter, onnx: Path, calibration: np.ndarray, films: np.ndarray) -> dict:
    """Quantize a private copy of ``onnx`` on ``calibration``; int8 masks vs fp32 masks on ``films``."""
    with tempfile.TemporaryDirectory(prefix="cxrlab-int8-") as tmp:
        copy = Path(shutil.copy(onnx, Path(tmp) / "model.onnx"))
        quantize_int8(copy, calibration)
        engine = create_backend("openvino-int8", seg.model, sample=torch.from_numpy(films[:1]), onnx_path=copy)
        seen = [seg.config.channels.index(c) for c in seg.needed_channels()]
        x = torch.from_numpy(films)
        with torch.no_grad():
            ref = torch.sigmoid(seg.model(x)[:, seen]).numpy() >= seg.config.threshold
            got = torch.sigmoid(engine(x)[:, seen]).numpy() >= seg.config.threshold
        return {"channels": [seg.config.channels[i] for i in seen], **_dice_by_channel(got, ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--severity", type=Path, default=Path("runs/severity256/run"))
    ap.add_argument("--diagnosis", type=Path, default=Path("runs/diag256"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/int8_calibration.md"))
    args = ap.parse_args()

    pipe = SeverityPipeline.from_run(args.severity, precision="fp32")
    models = {"lungs": (pipe.lung, pipe.lung.run_dir), "disease": (pipe.disease, pipe.disease.run_dir)}
    lines = ["# int8 calibration: what it needs", "",
             f"Produced by `.venv/bin/python bench/int8_calibration.py --severity {args.severity} "
             f"--diagnosis {args.diagnosis}`; {machine_info()['cpu']}, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {load_average()} (accuracy only: no "
             "figure here is a timing).", "",
             "Mask agreement of int8 graphs with PyTorch fp32 on the service benchmark's real films, by calibration "
             "set (NNCF post-training quantization, `performance` preset). Pooled: all pixels of all films; per "
             "film: mean and minimum of each film's Dice (a film where both draw nothing counts 1).", "",
             "| network | mask | calibrated on | films | Dice pooled | per film mean | per film min |",
             "|---|---|---|---|---|---|---|"]
    for name, (seg, run_dir) in models.items():
        onnx = fresh_onnx(run_dir)
        if onnx is None:
            export_run(args.severity if name == "disease" else run_dir)
            onnx = fresh_onnx(run_dir)
        training = calibration_images(run_dir, None, 16, seed=0)  # what `cxrlab export --int8` would draw
        seen = {hashlib.sha1(Path(t).read_bytes()).hexdigest() for t in training}
        films = [read_image_bytes(d)[0] for _, d in real_images(args.data, args.images)
                 if hashlib.sha1(d).hexdigest() not in seen]  # never a calibration image
        lungs = [m[schema.KEY_LUNG_MASK] for m in pipe.lung.predict_batch(films)] if seg.in_channels == 2 else None
        x = seg.network_inputs(films, lungs)
        real = [read_image(p)[0] for p in training]
        real_lungs = [m[schema.KEY_LUNG_MASK] for m in pipe.lung.predict_batch(real)] if seg.in_channels == 2 else None
        sets = {"1 phantom film": phantom_inputs(seg, 1), "6 phantom films": phantom_inputs(seg, 6),
                "16 training images of the run": seg.network_inputs(real, real_lungs)}
        for label, calibration in sets.items():
            a = agreement(seg, onnx, calibration, x)
            for c, pooled, mean, low in zip(a["channels"], a["pooled"], a["per_image_mean"], a["per_image_min"]):
                lines.append(f"| {name} | {c} | {label} | {len(x)} | {pooled:.4f} | {mean:.4f} | {low:.4f} |")
            print(lines[-1], flush=True)

    # the classifier: top class under OpenVINO bf16 vs fp32, on the same films (its own input pipeline)
    stage = create_stage("diagnosis", args.diagnosis, backend="torch-fp32")
    films = [read_image_bytes(d)[0] for _, d in real_images(args.data, args.images)]
    masks = pipe.lung.predict_batch(films)
    inputs = []
    for image, m in zip(films, masks):
        sample = {schema.KEY_IMAGE: image, schema.KEY_META: {"image": "film"},
                  **{k: m[k] for k in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK)}}
        inputs.append(stage.pipeline.prepare_with_lungs(sample)[0][0])
    x = torch.from_numpy(np.stack(inputs).astype(np.float32))
    module = stage.exported
    head = stage.task.name
    bf16 = create_backend("openvino-bf16", module, sample=x[:1])
    with torch.no_grad():
        ref, got = module(x), bf16(x)
    ref_p, got_p = torch.softmax(ref[head], 1), torch.softmax(got[head], 1)
    changed = float((ref_p.argmax(1) != got_p.argmax(1)).float().mean())
    lines += ["", f"Diagnosis classifier (`{args.diagnosis}`, {len(x)} films): under OpenVINO bf16 the top class "
              f"changes on {100 * changed:.1f} % of films; largest probability change "
              f"{float((ref_p - got_p).abs().max()):.3f}. cxrlab keeps classifiers off bf16/int8 (`fastest` refuses "
              "them by value; `cxrlab export --int8` is for segmentation runs).", "",
              "What this cannot show: agreement with fp32 is not accuracy (the severity page measures the chosen "
              "engines against ground truth), and a different hospital's films may need their own calibration "
              "set (`cxrlab export RUN --int8 --calibration MANIFEST`).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
