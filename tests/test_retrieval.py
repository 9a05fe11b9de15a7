"""Similar-case search: embeddings (run / backbone, resumable), FAISS index build/add/search, patient timelines,
own-patient exclusion, cosine ranking on hand-made vectors, the installed CLI's JSON contract, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data.phantom import generate_phantom
from cxrlab.errors import ConfigError, InputError
from cxrlab.retrieval import (CaseIndex, Embedder, add_to_index, build_index, embed, read_embeddings,
                              write_embeddings)

CXRLAB = Path(sys.executable).parent / "cxrlab"


def hand_made(tmp_path: Path, name: str, rows: list[tuple[str, str, float, list[float]]],
              finding: str = "covid19") -> Path:
    """An EMB file from (image, patient_id, offset_days, vector) rows."""
    meta = pd.DataFrame({"image": [f"images/{r[0]}" for r in rows], "image_path": [f"/data/{r[0]}" for r in rows],
                         "patient_id": [r[1] for r in rows], "offset_days": [r[2] for r in rows],
                         "finding": finding})
    return write_embeddings(tmp_path / name, np.array([r[3] for r in rows], np.float32), meta)


ROWS = [  # patient A near the query (1, 0, 0), B a bit further, C opposite
    ("a1.png", "A", 3, [0.9, 0.1, 0.0]), ("a2.png", "A", 0, [5.0, 0.0, 0.1]),      # a2: same direction, long
    ("b1.png", "B", 1, [0.6, 0.8, 0.0]), ("b0.png", "B", np.nan, [0.0, 1.0, 0.0]),
    ("c1.png", "C", 7, [-1.0, 0.0, 0.0]), ("b2.png", "B", 0, [0.5, 0.5, 0.7]),
]


@pytest.fixture
def small_index(tmp_path):
    return build_index(hand_made(tmp_path, "emb.parquet", ROWS), tmp_path / "idx")


def cosine(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_cosine_ranking_best_image_per_patient_and_series_order(small_index):
    index = CaseIndex.load(small_index)
    (result,) = index.search_vectors(np.array([[2.0, 0.0, 0.0]]), k=3)
    hits = result["results"]
    assert [h["patient_id"] for h in hits] == ["A", "B", "C"]
    # the best image of each patient, scored by cosine (length of the vectors does not matter)
    assert hits[0]["image"] == "images/a2.png"
    assert hits[0]["similarity"] == pytest.approx(cosine([5, 0, .1], [1, 0, 0]), abs=1e-5)
    assert hits[1]["image"] == "images/b1.png" and hits[1]["similarity"] == pytest.approx(0.6, abs=1e-5)
    assert hits[2]["similarity"] == pytest.approx(-1.0, abs=1e-5)
    # series: every film of the patient, by offset; a film without offset last
    assert hits[1]["series"] == [{"image": "images/b2.png", "offset_days": 0},
                                 {"image": "images/b1.png", "offset_days": 1},
                                 {"image": "images/b0.png", "offset_days": None}]
    assert [s["image"] for s in hits[0]["series"]] == ["images/a2.png", "images/a1.png"]
    assert set(hits[0]) == {"patient_id", "image", "similarity", "finding", "series"}
    assert hits[0]["finding"] == "covid19"


def test_own_patient_is_excluded_and_k_caps_at_the_other_patients(small_index):
    index = CaseIndex.load(small_index)
    a, b = index.search_vectors(np.array([[1.0, 0, 0], [0, 1.0, 0]]), k=5, patient_ids=["A", None])
    assert [h["patient_id"] for h in a["results"]] == ["B", "C"]
    assert [h["patient_id"] for h in b["results"]] == ["B", "A", "C"]  # unknown patient: nobody excluded
    (one,) = index.search_vectors(np.array([1.0, 0, 0]), k=1, patient_ids=["A"])
    assert [h["patient_id"] for h in one["results"]] == ["B"]


def test_incremental_add_equals_a_build_of_everything(tmp_path, small_index):
    more = [("d1.png", "D", 0, [0.99, 0.0, 0.14]), ("a1.png", "A", 3, [0.9, 0.1, 0.0])]  # a1 already indexed
    path, added = add_to_index(small_index, hand_made(tmp_path, "more.parquet", more))
    assert added == 1
    index = CaseIndex.load(path)
    assert len(index) == len(ROWS) + 1
    assert sorted(p.name for p in path.iterdir()) == ["index.json", "meta-2.parquet", "vectors-2.faiss"]
    everything = build_index(hand_made(tmp_path, "all.parquet", ROWS + more[:1]), tmp_path / "all")
    q = np.array([[1.0, 0.0, 0.1], [0.1, 1.0, 0.0]])
    assert index.search_vectors(q, k=4) == CaseIndex.load(everything).search_vectors(q, k=4)
    assert index.search_vectors(q[:1], k=1)[0]["results"][0]["patient_id"] == "D"
    assert add_to_index(path, hand_made(tmp_path, "more.parquet", more))[1] == 0  # nothing new


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_agree_with_exact_search_on_clustered_vectors(tmp_path, kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    vectors = centres[np.arange(400) % 8] + 0.05 * rng.normal(size=(400, 32))
    meta = pd.DataFrame({"image": [f"{i}.png" for i in range(400)], "image_path": [f"/x/{i}.png" for i in range(400)],
                         "patient_id": [f"P{i // 2}" for i in range(400)], "offset_days": np.arange(400) % 2})
    emb = write_embeddings(tmp_path / "emb.parquet", vectors, meta)
    exact = CaseIndex.load(build_index(emb, tmp_path / "flat"))
    approx = CaseIndex.load(build_index(emb, tmp_path / kind, kind=kind))
    assert approx.info["kind"] == kind
    q = centres + 0.05 * rng.normal(size=centres.shape)
    top_exact = [r["results"][0]["patient_id"] for r in exact.search_vectors(q, k=3)]
    top_approx = [r["results"][0]["patient_id"] for r in approx.search_vectors(q, k=3)]
    assert np.mean(np.array(top_exact) == np.array(top_approx)) >= 0.75


def test_bad_inputs_are_input_errors(tmp_path, small_index):
    with pytest.raises(InputError, match="does not exist"):
        CaseIndex.load(tmp_path / "missing")
    with pytest.raises(InputError, match="not a cxrlab index"):
        CaseIndex.load(tmp_path)
    wrong = hand_made(tmp_path, "wrong.parquet", [("z.png", "Z", 0, [1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(InputError, match="dimension 4 cannot go into an index of dimension 3"):
        add_to_index(small_index, wrong)
    with pytest.raises(InputError, match="dimension"):
        CaseIndex.load(small_index).search_vectors(np.ones((1, 4)), k=2)
    with pytest.raises(ConfigError):
        build_index(wrong, tmp_path / "x", kind="annoy")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not an embeddings file"):
        read_embeddings(tmp_path / "junk.parquet")
    no_patient = pd.DataFrame({"image": ["a.png"], "image_path": ["/a.png"], "patient_id": [None]})
    with pytest.raises(InputError, match="no patient_id"):
        build_index(write_embeddings(tmp_path / "np.parquet", np.ones((1, 3)), no_patient), tmp_path / "np")
    # a half-written index (metadata lost) is refused, naming the folder
    info = json.loads((small_index / "index.json").read_text())
    (small_index / info["meta_file"]).unlink()
    with pytest.raises(InputError, match="incomplete"):
        CaseIndex.load(small_index)


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval_phantom")
    generate_phantom(root, n_patients=6, size=64, seed=3, max_studies=3)
    return root


def test_embed_resumes_and_skips_rows_already_embedded(tmp_path, tiny_phantom):
    embedder = Embedder.create("efficientnet_lite0", size=64, precision="fp32")
    seen = []
    original = embedder.__call__

    class Counting(Embedder):
        def __call__(self, samples):
            seen.append(len(samples))
            return original(samples)

    embedder.__class__ = Counting
    manifest = pd.read_csv(tiny_phantom / "manifest.csv")
    first = tiny_phantom / manifest["image"][0], tiny_phantom / manifest["image"][1]
    out = tmp_path / "emb.parquet"
    embed(embedder, list(first), out, batch_size=4)
    part = read_embeddings(out)
    assert len(part) == 2 and sum(seen) == 2
    seen.clear()
    embed(embedder, tiny_phantom, out, batch_size=4, flush_every=2)
    full = read_embeddings(out)
    assert sum(seen) == len(manifest) - 2 and len(full) == len(manifest)
    assert np.array_equal(full.vectors[:2], part.vectors)  # earlier rows kept, not recomputed
    # rows from the manifest carry its metadata and its spelling of the path
    row = full.meta.set_index("image_path").loc[str((tiny_phantom / manifest["image"][3]).resolve())]
    assert row["image"] == manifest["image"][3] and row["patient_id"] == manifest["patient_id"][3]
    other = Embedder.create("efficientnet_lite0", size=32, precision="fp32")
    with pytest.raises(InputError, match="not of"):
        embed(other, tiny_phantom, out)
    with pytest.raises(InputError, match="neither a run directory nor a backbone"):
        embed("no_such_backbone", tiny_phantom, tmp_path / "e2.parquet")


def test_run_embedding_is_the_input_of_the_heads(tmp_path, tiny_phantom):
    from cxrlab.recipes import load_recipe
    from cxrlab.train import load_run, train

    recipe = load_recipe("phantom-diagnosis").model_dump()
    recipe["split"]["stratify"] = None
    recipe["train"].update(stages=[{"epochs": 1, "train_blocks": "all", "lr": 0.003}], num_workers=0,
                           precision="fp32")
    run_dir = train(recipe, str(tiny_phantom / "manifest.csv"), tmp_path / "run", show_progress=False)
    out = embed(run_dir, tiny_phantom, tmp_path / "emb.parquet", precision="fp32")
    emb = read_embeddings(out)
    run = load_run(run_dir)
    assert emb.dim == run.model.backbone.num_features and emb.info["source"]["kind"] == "run"
    pred = run.predict(list(emb.meta["image_path"][:4]))
    with torch.no_grad():
        logits = run.model.heads["diagnosis"](torch.from_numpy(emb.vectors[:4])).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cols = [c for c in pred.columns if c.startswith("prob_")]
    assert np.allclose(probs, pred[cols].to_numpy(float), atol=1e-4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(CXRLAB), *args], capture_output=True, text=True, env=env, timeout=120)


def test_installed_cli_json_contract(tmp_path, tiny_phantom):
    emb, idx = tmp_path / "emb.parquet", tmp_path / "cases"
    done = run_cli("embed", "efficientnet_lite0", str(tiny_phantom), "--out", str(emb), "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    assert run_cli("index", "build", str(emb), "--out", str(idx)).returncode == 0
    manifest = pd.read_csv(tiny_phantom / "manifest.csv")
    q1, q2 = (str(tiny_phantom / manifest["image"][i]) for i in (0, len(manifest) - 1))
    done = run_cli("index", "search", str(idx), q1, q2, "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [obj["query"] for obj in lines] == [q1, q2]
    written = set(manifest["image"])
    for obj, qi in zip(lines, (0, len(manifest) - 1)):
        assert set(obj) == {"query", "results"} and len(obj["results"]) == 3
        own = manifest["patient_id"][qi]
        assert own not in {r["patient_id"] for r in obj["results"]}
        sims = [r["similarity"] for r in obj["results"]]
        assert sims == sorted(sims, reverse=True)
        for r in obj["results"]:
            assert set(r) == {"patient_id", "image", "similarity", "finding", "series"}
            assert r["image"] in written  # as written in the indexed manifest
            films = manifest[manifest["patient_id"] == r["patient_id"]].sort_values("offset_days")
            assert r["series"] == [{"image": i, "offset_days": int(o)}
                                   for i, o in zip(films["image"], films["offset_days"])]
            assert r["finding"] == films["finding"].iloc[0]
    # the Python API returns the same objects
    assert CaseIndex.load(idx).search([q1, q2], k=3) == lines
    bad = run_cli("index", "search", str(tmp_path / "nope"), q1)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_benchmark_metrics_rank_patients_like_the_index(tmp_path):
    from cxrlab.retrieval.evaluate import patient_neighbours, retrieval_benchmark, retrieval_scores

    vectors = np.array([r[3] for r in ROWS] + [[1.0, 0.05, 0.0]], np.float32)
    patients = [r[1] for r in ROWS] + ["Q"]
    top = patient_neighbours(vectors, patients, queries=np.array([6, 0]), k=3)
    assert [patients[i] for i in top[0]] == ["A", "B", "C"] and top[0][0] == 1  # best film of A is a2
    assert [patients[i] for i in top[1] if i >= 0] == ["Q", "B", "C"]          # query a1: patient A excluded
    # the same order as the index's search
    index = CaseIndex.load(build_index(hand_made(tmp_path, "e.parquet", ROWS), tmp_path / "i"))
    assert [h["patient_id"] for h in index.search_vectors(vectors[6:], k=3)[0]["results"]] == ["A", "B", "C"]
    labels = np.array(["x", "x", "y", "y", "z", "y", "x"])
    s = retrieval_scores(top[:1], labels, np.array([6]), n_relevant=np.array([1]), ks=(1, 3))
    assert s["precision@1"][0] == 1 and s["precision@3"][0] == pytest.approx(1 / 3) and s["ap@3"][0] == 1
    s = retrieval_scores(np.array([[2, 0, 4]]), labels, np.array([6]), n_relevant=np.array([2]), ks=(3,))
    assert s["ap@3"][0] == pytest.approx((1 / 2) / 2)  # the relevant patient at rank 2 of 2 possible
    est = retrieval_benchmark(vectors, labels, patients, sources=["s"] * 7, ks=(1,), n_boot=50)
    assert 0 <= est["precision@1"].value <= 1 and est["n_queries"].value == 7
    assert est["nn_same_source"].value == 1.0


def test_service_similar_endpoint_searches_an_upload(tmp_path, tiny_phantom):
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from cxrlab.serve.app import create_app
    from cxrlab.serve.config import ServiceConfig

    emb = embed("efficientnet_lite0", tiny_phantom, tmp_path / "emb.parquet", precision="fp32")
    idx = build_index(emb, tmp_path / "cases")
    stub = SimpleNamespace(analyze_many=lambda *a, **k: [], warmup=lambda: None, stage_names=[], backend="none")
    manifest = pd.read_csv(tiny_phantom / "manifest.csv")
    film = (tiny_phantom / manifest["image"][2]).read_bytes()
    client = TestClient(create_app(ServiceConfig(similar={"index": str(idx), "k": 2}), pipeline=stub))
    answer = client.post("/v1/similar", files={"file": ("x.png", film, "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"query", "results", "notice"} and body["query"] == "upload" and len(body["results"]) == 2
    top = body["results"][0]
    # the CLI's fields, plus the service's: the best film's index row, its thumbnail link and recorded outcomes
    assert set(top) == {"patient_id", "image", "similarity", "finding", "series", "row", "thumbnail", "outcomes"}
    assert top["patient_id"] == manifest["patient_id"][2] and top["similarity"] > 0.99  # the same film, indexed
    assert top["thumbnail"] == f"/v1/similar/thumbnails/{top['row']}" and isinstance(top["outcomes"], dict)
    thumb = client.get(top["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert thumb.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert thumb.headers["cache-control"] == "private, no-store"
    # addressed by index row only: unknown rows are 404, anything that is not a row number is refused
    n_rows = len(CaseIndex.load(idx))
    for bad in (str(n_rows), "-1", "99999999999999999999"):
        assert client.get(f"/v1/similar/thumbnails/{bad}").status_code == 404, bad
    secret = tmp_path / "secret.png"
    secret.write_bytes(film)
    for bad in (str(secret), "%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd", "1%2F..%2F..%2Fetc%2Fpasswd", "0.5",
                "images%2Fx.png"):
        answer = client.get(f"/v1/similar/thumbnails/{bad}")
        assert answer.status_code in (404, 422) and not answer.content.startswith(b"\x89PNG"), bad
    smuggled = client.get("/v1/similar/thumbnails/0", params={"path": str(secret)})  # takes no query parameters
    assert smuggled.status_code == 422 and not smuggled.content.startswith(b"\x89PNG")
    assert "path" in smuggled.text
    assert client.post("/v1/similar?k=0", files={"file": ("x.png", film, "image/png")}).status_code == 422
    assert client.post("/v1/similar", files={"file": ("x.png", b"not an image", "image/png")}).status_code in (415, 422)
    plain = TestClient(create_app(ServiceConfig(), pipeline=stub))
    assert plain.post("/v1/similar", files={"file": ("x.png", film, "image/png")}).status_code == 404
    assert plain.get("/v1/similar/thumbnails/0").status_code == 404
    assert plain.get("/v1/health").json()["similar"] is False and client.get("/v1/health").json()["similar"] is True


def test_cross_fitted_columns_pool_to_the_single_call_estimate():
    from cxrlab.retrieval.evaluate import retrieval_benchmark, retrieval_columns, summarize_columns

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    patients = np.array([f"p{i // 2}" for i in range(40)])
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    whole = retrieval_benchmark(vectors, labels, patients, queries=np.arange(40), n_boot=100)
    # two folds of query patients, each scored with "its own" vectors (here the same ones), then pooled
    parts = [retrieval_columns(vectors, labels, patients, queries=q) for q in (np.arange(20), np.arange(20, 40))]
    pooled = summarize_columns({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, n_boot=100)
    for name in ("precision@5", "ap@10", "n_queries", "n_query_patients"):
        assert pooled[name].as_dict() == pytest.approx(whole[name].as_dict(), nan_ok=True)
    # a fold embedded by another run changes only that fold's queries
    other = retrieval_columns(-vectors, labels, patients, queries=np.arange(20, 40))
    mixed = summarize_columns({k: np.concatenate([parts[0][k], other[k]]) for k in other}, n_boot=10)
    assert mixed["precision@1"].value == pytest.approx(
        np.mean(np.concatenate([parts[0]["precision@1"], other["precision@1"]])))
