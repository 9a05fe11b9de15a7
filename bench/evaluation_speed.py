"""Speed of the evaluation suite: the patient-bootstrap cores (numpy) against the same statistics through
scikit-learn, and optionally ``build_report`` on a run directory.

    .venv/bin/python bench/evaluation_speed.py [--run RUN --data MANIFEST] [--out bench/results/evaluation_speed.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, cohen_kappa_score, f1_score, roc_auc_score

from cxrlab.evaluate import binary_metrics, ordinal_metrics
from cxrlab.evaluate.bootstrap import bootstrap
from cxrlab.utils import atomic_write_json

from evaluation_brixia_readers import machine  # a sibling script: bench/ is on sys.path when run as a file


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--run", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="bench/results/evaluation_speed.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, args.n)
    p = np.clip(0.3 * y + 0.7 * rng.random(args.n), 0, 1)
    pid = np.arange(args.n) // 2
    g = rng.integers(0, 4, args.n)
    gp = np.clip(g + rng.integers(-1, 2, args.n), 0, 3)

    def sk_binary(idx):
        yy, pp = y[idx], p[idx]
        return {"auc": roc_auc_score(yy, pp), "ap": average_precision_score(yy, pp), "brier": brier_score_loss(yy, pp)}

    def sk_ordinal(idx):
        return {"kappa": cohen_kappa_score(g[idx], gp[idx], weights="quadratic"),
                "f1": f1_score(g[idx], gp[idx], average="macro")}

    res = {"machine": machine(), "n_images": args.n, "n_boot": args.n_boot, "seconds": {
        "binary_metrics (numpy cores, all binary metrics)": timed(
            lambda: binary_metrics(y, p, pid, fixed_threshold=0.5, n_boot=args.n_boot)),
        "sklearn AUC + AP + Brier only": timed(lambda: bootstrap(sk_binary, args.n, pid, n_boot=args.n_boot), 1),
        "ordinal_metrics (numpy cores, all ordinal metrics)": timed(
            lambda: ordinal_metrics(g, gp, 4, patient_ids=pid, n_boot=args.n_boot)),
        "sklearn kappa + macro-F1 only": timed(lambda: bootstrap(sk_ordinal, args.n, pid, n_boot=args.n_boot), 1),
    }}
    if args.run:
        from cxrlab.evaluate import build_report

        t0 = time.perf_counter()
        build_report(args.run, data=args.data, out="bench/results/evaluation_report_bench", n_boot=args.n_boot)
        res["seconds"]["build_report (incl. gallery + HCS)"] = time.perf_counter() - t0
    atomic_write_json(args.out, res)
    for k, v in res["seconds"].items():
        print(f"| {k} | {v:.2f} s |")
    print(res["machine"])


if __name__ == "__main__":
    main()
