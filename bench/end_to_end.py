"""End-to-end service benchmark (what ``cxrlab bench`` runs), writing ``docs/benchmarks/service.md``.

    .venv/bin/python bench/end_to_end.py --config runs/demo/service.yaml
    .venv/bin/python bench/end_to_end.py --lung runs/lung_bench --diagnosis RUN --icu RUN --opacity RUN

Run directories given one by one are written to ``bench/results/service_bench.yaml`` first. On the same real
images from ``../shared/data`` (``--images``, drawn evenly from every folder, fixed seed): stage timings,
single-image latency with heatmap p50/p95 and batch throughput (lung + diagnosis, no heatmap) per backend,
TorchXRayVision DenseNet-121 as a reference, achieved FLOP/s vs the measured GEMM peak, and a loopback load
test (200 requests, concurrency 8). Raw figures: ``bench/results/end_to_end.json``.
"""

import os

# OpenMP threads that spin while waiting collapse when the CPU is shared (measured here: a 2-thread forward
# 7x slower under load 18); passive waiting must be chosen before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cxrlab.serve.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
