"""End-to-end service benchmark (what ``cxrlab bench`` runs), writing ``docs/benchmarks/service.md``.

    .venv/bin/python bench/end_to_end.py --config runs/demo/service.yaml
    .venv/bin/python bench/end_to_end.py --lung runs/lung_bench --diagnosis RUN --icu RUN --opacity RUN

Run directories given one by one are written to ``bench/results/service_bench.yaml`` first. On the same real
images from ``../shared/data`` (``--images``, drawn evenly from every folder, fixed seed): stage timings,
single-image latency with heatmap p50/p95 and batch throughput (lung + diagnosis, no heatmap) per backend,
TorchXRayVision DenseNet-121 as a reference, achieved FLOP/s vs the measured GEMM peak, and a loopback load
test (200 requests, concurrency 8). Raw figures: ``bench/results/end_to_end.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cxrlab.serve.benchmark import run_benchmark
from cxrlab.serve.config import write_service_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="SERVICE.yaml (default runs/demo/service.yaml)")
    for role in ("lung", "diagnosis", "icu", "opacity"):
        ap.add_argument(f"--{role}", type=Path, help=f"{role} run directory (instead of --config)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--backends", nargs="*", help="default: every backend available on this CPU")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/service.md"))
    ap.add_argument("--json", type=Path, default=Path("bench/results/end_to_end.json"))
    args = ap.parse_args()
    config = args.config
    runs = {role: getattr(args, role) for role in ("lung", "diagnosis", "icu", "opacity") if getattr(args, role)}
    if runs:
        config = write_service_config(Path("bench/results/service_bench.yaml"), lung_run=runs.get("lung"),
                                      diagnosis_run=runs.get("diagnosis"), icu_run=runs.get("icu"),
                                      opacity_run=runs.get("opacity"))
    t0 = time.perf_counter()
    result = run_benchmark(data=args.data, config=config, n_images=args.images, out_md=args.out,
                           out_json=args.json, n_requests=args.requests, concurrency=args.concurrency,
                           backends=args.backends,
                           on_step=lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True))
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
