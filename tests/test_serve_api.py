"""The service end to end on tiny real run directories: every endpoint with PNG, JPEG and DICOM uploads made
here, every error path (413/415/422, never 500), the token rule, the result store's TTL, de-identification,
a real loopback start, and ``cxrlab serve`` stopping cleanly on Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cxrlab.data.phantom import render_sample
from cxrlab.errors import ConfigError
from cxrlab.serve import create_app, load_service_config, start_background, write_service_config
from cxrlab.serve.config import LimitsConfig
from cxrlab.serve.pipeline import AnalysisPipeline
from cxrlab.quality.rules import mask_checks
from cxrlab.serve.samples import (FAKE_PATIENT_ID, FAKE_PATIENT_NAME, encode_dicom, encode_jpeg, encode_png)
from cxrlab.serve.security import UploadError, require_token_rule
from cxrlab.serve.store import ResultStore

TOKEN = "test-token-0123456789abcdef"
ALL_ROLES = {"lung", "diagnosis", "icu", "opacity"}



@pytest.fixture(scope="module")
def pipeline(service_runs):
    return AnalysisPipeline.from_config(load_service_config(service_runs["config"]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ResultStore(tmp_path_factory.mktemp("store"), ttl_s=600)


@pytest.fixture(scope="module")
def client(service_runs, pipeline, store):
    app = create_app(load_service_config(service_runs["config"]), pipeline=pipeline, store=store)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def phantom():
    return render_sample("covid19", severity=0.7, size=128, seed=3)


UPLOADS = {
    "png": lambda im: encode_png(im),
    "jpeg": lambda im: encode_jpeg(im),
    "dicom": lambda im: encode_dicom(im),
}


@pytest.mark.parametrize("kind", list(UPLOADS))
def test_analyze_each_format(client, phantom, kind):
    # the file name lies about the type on purpose: the type is decided by content
    r = client.post("/v1/analyze", files={"file": ("upload.txt", UPLOADS[kind](phantom["image"]))})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["image"]["format"] == kind
    assert rep["image"]["width"] == 128 and rep["image"]["height"] == 128
    assert set(rep["stages"]) == ALL_ROLES
    assert "not for diagnosis" in rep["notice"]
    q = rep["quality"]
    assert isinstance(q["lung_masks_plausible"], bool) and isinstance(q["inverted"], bool)
    assert q["lateral_view"] is (False if kind == "dicom" else None)  # DICOM says PA; PNG/JPEG cannot tell
    sev = rep["severity"]
    if sev is not None:  # a tiny model may find no lung at all; then the reason is in the notes
        assert set(sev["zones"]) == set("ABCDEF")
        assert set(sev["per_lung"]) == {"patient_right", "patient_left"}
        assert "brixia_global" in sev["totals"]
    probs = rep["diagnosis"]["probabilities"]
    assert set(probs) == {"normal", "bacterial", "viral", "covid19"} and abs(sum(probs.values()) - 1) < 1e-4
    assert rep["diagnosis"]["predicted"] == max(probs, key=probs.get)
    assert 0 <= rep["icu"]["risk"] <= 1
    hm = rep["heatmap"]
    assert hm["method"] == "gradcam" and hm["target"] == rep["diagnosis"]["predicted"] and hm["shown_on_image"]
    assert hm["concordance"] is None or 0 <= hm["concordance"] <= 1
    for stage in ("decode", "lung_segmentation", "lung_segmentation.network", "diagnosis", "diagnosis.network",
                  "heatmap", "icu", "opacity_segmentation", "severity_scores", "render", "total"):
        assert rep["timings_ms"][stage] >= 0
    assert rep["timings_ms"]["total"] >= rep["timings_ms"]["heatmap"]
    assert set(rep["models"]) == ALL_ROLES and all("@" in v for v in rep["models"].values())
    heat = cv2.imdecode(np.frombuffer(client.get(rep["links"]["heatmap"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (128, 128, 4) and heat[..., 3].max() > 0  # BGRA, alpha follows the activation
    for name in ("image", "overlay"):
        png = client.get(rep["links"][name])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        decoded = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape[:2] == (rep["image"]["display_height"], rep["image"]["display_width"])
    again = client.get(rep["links"]["self"]).json()
    assert again["id"] == rep["id"] and again["timings_ms"] == rep["timings_ms"]


def test_dicom_identifiers_never_kept_or_logged(client, store, phantom, caplog):
    caplog.set_level(logging.DEBUG)
    r = client.post("/v1/analyze", files={"file": ("Doe_Jane.dcm", encode_dicom(phantom["image"]))})
    assert r.status_code == 200
    folder = store.root / r.json()["id"]
    kept = b"".join(p.read_bytes() for p in folder.iterdir())
    for secret in (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, "Secret General Hospital", "Doe_Jane"):
        assert secret.encode() not in kept
        assert secret not in r.text
        assert secret not in caplog.text
    assert r.json()["id"] in caplog.text  # requests are logged, by result id only


def test_monochrome1_dicom_is_displayed_like_monochrome2(client, phantom):
    a = client.post("/v1/analyze", files={"file": ("a", encode_dicom(phantom["image"]))}).json()
    b = client.post("/v1/analyze", files={"file": ("b", encode_dicom(phantom["image"], monochrome1=True))}).json()
    ia, ib = (cv2.imdecode(np.frombuffer(client.get(x["links"]["image"]).content, np.uint8), 0) for x in (a, b))
    assert np.abs(ia.astype(int) - ib.astype(int)).max() <= 1


def test_large_dicom_is_analysed_and_shown_downscaled(client):
    big = render_sample("bacterial", severity=0.5, size=1280, seed=2)["image"]
    data = encode_dicom(big)
    assert len(data) > 3_000_000  # more than starlette's 1 MB in-memory spool
    rep = client.post("/v1/analyze", files={"file": ("x", data)}).json()
    assert (rep["image"]["width"], rep["image"]["display_width"]) == (1280, 1024)
    png = cv2.imdecode(np.frombuffer(client.get(rep["links"]["overlay"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.shape[:2] == (1024, 1024)


def test_lateral_dicom_is_flagged(client, phantom):
    r = client.post("/v1/analyze", files={"file": ("x", encode_dicom(phantom["image"], view_position="LL"))})
    assert r.status_code == 200 and r.json()["quality"]["lateral_view"] is True


def test_batch_mixes_results_and_per_file_errors(client, phantom):
    files = [("files", ("a", encode_png(phantom["image"]))), ("files", ("b", b"GIF89a not an x-ray")),
             ("files", ("c", encode_jpeg(phantom["image"]))), ("files", ("d", encode_png(phantom["image"])[:300]))]
    r = client.post("/v1/analyze/batch?heatmap=false", files=files)
    assert r.status_code == 200
    res = r.json()["results"]
    assert r.json()["n_ok"] == 2
    assert "id" in res[0] and "id" in res[2]
    assert "heatmap" not in res[0]["links"] and "heatmap" not in res[0]["timings_ms"]
    assert res[0]["diagnosis"]["probabilities"]
    assert res[1]["error"]["status"] == 415 and res[3]["error"]["status"] == 422


def test_health_and_model_cards(client):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and set(h["stages"]) == ALL_ROLES and h["auth_required"] is False
    cards = {c["role"]: c for c in client.get("/v1/models").json()["models"]}
    assert set(cards) == ALL_ROLES
    for card in cards.values():
        assert card["recipe"] and card["intended_use"] and card["limitations"]
        assert "splits" in card["training_data"] and isinstance(card["validation_metrics"], dict)
    assert cards["lung"]["training_data"]["splits"]["train"]["patients"] > 0
    assert cards["lung"]["recipe"]["arch"] == "unet"
    assert "zone_threshold" in cards["opacity"]["scoring"]
    # the lung output the service draws, and the one the severity scoring was fitted with
    assert cards["lung"]["lung_output"] == "shared" and cards["opacity"]["fitted_with_lung_output"] == "shared"
    assert cards["diagnosis"]["recipe"]["tasks"][0]["kind"] == "diagnosis"
    assert cards["diagnosis"]["validation_metrics"]  # metrics.json of the run, as written by the trainer


def _png_of(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


ERRORS = [
    ("text file", b"just some text, not an image", 415),
    ("GIF", b"GIF89a" + bytes(100), 415),
    ("PDF", b"%PDF-1.4\n" + bytes(100), 415),
    ("empty", b"", 422),
    ("truncated PNG", None, 422),
    ("tiny image", _png_of(np.full((20, 20), 128, np.uint8)), 422),
    ("blank image", _png_of(np.full((128, 128), 128, np.uint8)), 422),
    ("colour photo", _png_of(np.dstack([np.full((128, 128), c, np.uint8) for c in (0, 90, 255)])
                             + np.random.default_rng(0).integers(0, 40, (128, 128, 3), dtype=np.uint8)), 422),
    ("CT DICOM", "ct", 422),
    ("broken DICOM", "broken-dicom", 422),
]


@pytest.mark.parametrize("name,data,status", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_uploads_get_json_errors(client, phantom, name, data, status):
    if data is None:
        data = encode_png(phantom["image"])[:400]
    elif data == "ct":
        data = encode_dicom(phantom["image"], modality="CT")
    elif data == "broken-dicom":
        data = encode_dicom(phantom["image"])[:600]
    r = client.post("/v1/analyze", files={"file": ("x.png", data)})
    assert r.status_code == status, r.text
    assert r.json()["error"]["status"] == status and r.json()["error"]["reason"]


def test_request_errors(client):
    assert client.post("/v1/analyze").status_code == 422  # no file field
    assert client.post("/v1/analyze", data={"file": "text"}).status_code == 422
    assert client.get("/v1/results/" + "0" * 32).status_code == 404
    assert client.get("/v1/results/../../etc/passwd").status_code == 404
    assert client.get("/v1/results/not-an-id/image.png").status_code == 404


def test_unknown_query_parameters_are_named(client, phantom):
    png = encode_png(phantom["image"])
    r = client.post("/v1/analyze?heatmaps=false", files={"file": ("x.png", png)})
    assert r.status_code == 422
    reason = r.json()["error"]["reason"]
    assert "heatmaps" in reason and "heatmap" in reason.replace("heatmaps", "")
    assert client.get("/v1/health?verbose=1").status_code == 422
    ok = client.post("/v1/analyze?heatmap=false", files={"file": ("x.png", png)})
    assert ok.status_code == 200 and "heatmap" not in ok.json()["links"]
    assert client.get("/?v=2").status_code == 200  # the viewer page itself is not an API route


def test_size_and_pixel_limits(service_runs, pipeline, store, phantom):
    limits = LimitsConfig(max_upload_bytes=20_000, max_pixels=200 * 200, min_side=64, max_batch=2)
    cfg = load_service_config(service_runs["config"]).model_copy(update={"limits": limits})
    with TestClient(create_app(cfg, pipeline=pipeline, store=store)) as c:
        big = encode_dicom(phantom["image"])  # ~33 kB > 20 kB
        assert c.post("/v1/analyze", files={"file": ("x", big)}).status_code == 413
        # a small file that would decode to 1000x1000 pixels: refused from its header, before decoding
        bomb = _png_of(np.zeros((1000, 1000), np.uint8))
        assert len(bomb) < 20_000
        r = c.post("/v1/analyze", files={"file": ("x", bomb)})
        assert r.status_code == 413 and "pixels" in r.json()["error"]["reason"]
        three = [("files", ("a", encode_png(phantom["image"])))] * 3
        assert c.post("/v1/analyze/batch", files=three).status_code == 413


def test_token_rule_and_bearer_auth(service_runs, pipeline, store, phantom, monkeypatch):
    with pytest.raises(ConfigError, match="token"):
        require_token_rule("0.0.0.0", None, "CXRLAB_SERVICE_TOKEN")
    with pytest.raises(ConfigError, match="token"):
        require_token_rule("10.1.2.3", None, "CXRLAB_SERVICE_TOKEN")
    with pytest.raises(ConfigError, match="short"):
        require_token_rule("0.0.0.0", "abc", "CXRLAB_SERVICE_TOKEN")
    require_token_rule("127.0.0.1", None, "CXRLAB_SERVICE_TOKEN")
    require_token_rule("localhost", None, "CXRLAB_SERVICE_TOKEN")
    require_token_rule("0.0.0.0", TOKEN, "CXRLAB_SERVICE_TOKEN")
    monkeypatch.setenv("CXRLAB_SERVICE_TOKEN", TOKEN)
    cfg = load_service_config(service_runs["config"])
    with TestClient(create_app(cfg, pipeline=pipeline, store=store)) as c:
        png = encode_png(phantom["image"])
        assert c.get("/v1/health").json()["auth_required"] is True  # health stays open for probes
        assert c.post("/v1/analyze", files={"file": ("x", png)}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        bad = {"Authorization": "Bearer wrong-token-0123456789"}
        assert c.post("/v1/analyze", files={"file": ("x", png)}, headers=bad).status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/v1/analyze", files={"file": ("x", png)}, headers=ok)
        assert r.status_code == 200
        assert c.get(r.json()["links"]["overlay"]).status_code == 401
        assert c.get(r.json()["links"]["overlay"], headers=ok).status_code == 200
        assert c.get("/").status_code == 200  # the viewer page itself holds no data


def test_result_store_expires(tmp_path):
    store = ResultStore(tmp_path / "s", ttl_s=0.2)
    rid = store.new_id()
    store.put(rid, {"a": 1}, {"image": np.zeros((8, 8), np.uint8)})
    assert store.path(rid, "image.png") is not None
    assert store.path(rid, "../../x.png") is None
    time.sleep(0.3)
    assert store.path(rid, "image.png") is None
    assert store.sweep() == 1 and not (tmp_path / "s" / rid).exists()


def test_quality_flags_from_true_masks(phantom):
    from cxrlab.io import ImageHeader

    header = ImageHeader(format="png", rows=128, columns=128, bits_stored=8, photometric="MONOCHROME2")
    masks = {k: phantom[k] for k in ("lung_mask", "patient_right_mask", "patient_left_mask")}
    good = mask_checks(phantom["image"], masks, header)
    assert good["lung_masks_plausible"] is True and good["inverted"] is False
    assert mask_checks(1 - phantom["image"], masks, header)["inverted"] is True
    swapped = {"lung_mask": masks["lung_mask"], "patient_right_mask": masks["patient_left_mask"],
               "patient_left_mask": masks["patient_right_mask"]}
    assert mask_checks(phantom["image"], swapped, header)["lung_masks_plausible"] is False
    one = dict(masks, patient_left_mask=np.zeros_like(masks["patient_left_mask"]))
    assert mask_checks(phantom["image"], one, header)["lung_masks_plausible"] is False


def test_service_config_round_trip_and_errors(tmp_path, service_runs):
    out = write_service_config(tmp_path / "svc" / "service.yaml", lung_run=service_runs["lung"],
                               opacity_run=service_runs["opacity"], backend="onnxruntime", port=8123)
    cfg = load_service_config(out)
    assert cfg.models.lung == service_runs["lung"].resolve() and cfg.backend == "onnxruntime" and cfg.port == 8123
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {lung: nowhere}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_service_config(bad)
    bad.write_text("modles: {}\n")
    with pytest.raises(ConfigError, match="modles"):
        load_service_config(bad)
    bad.write_text("backend: tensorrt\n")
    with pytest.raises(ConfigError, match="backend"):
        load_service_config(bad)


def test_real_loopback_server(service_runs, pipeline, store, phantom):
    app = create_app(load_service_config(service_runs["config"]), pipeline=pipeline, store=store)
    server = start_background(app)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/v1/health").json()["status"] == "ok"
            r = c.post("/v1/analyze", files={"file": ("x", encode_jpeg(phantom["image"]))})
            assert r.status_code == 200 and c.get(r.json()["links"]["heatmap" if "heatmap" in r.json()["links"]
                                                                 else "overlay"]).status_code == 200
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_cli_serve_stops_cleanly_on_ctrl_c(tmp_path):
    """``cxrlab serve`` (what ``make serve`` runs) exits 0 on SIGINT and removes its temporary result store."""
    config = write_service_config(tmp_path / "service.yaml", port=0)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "cxrlab.cli.main", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        else:
            pytest.fail("service did not start: " + "".join(lines))
        assert any(tmp_path.glob("cxrlab-results-*"))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in rest
    assert not any(tmp_path.glob("cxrlab-results-*"))


def test_run_roles_detected_for_serve_run_dirs(service_runs, tmp_path):
    from cxrlab.serve.stages import detect_role

    for role in ALL_ROLES:
        assert detect_role(service_runs[role]) == role
    (tmp_path / "recipe.yaml").write_text("name: something-else\n")
    with pytest.raises(ConfigError, match="role"):
        detect_role(tmp_path)
    with pytest.raises(ConfigError, match="recipe.yaml"):
        detect_role(tmp_path / "..")


def test_micro_batcher_groups_requests_that_queue_during_a_run():
    import asyncio

    from cxrlab.serve.batcher import MicroBatcher

    calls = []

    def analyze_many(datas, *, heatmap):
        calls.append((list(datas), heatmap))
        time.sleep(0.2)
        return [d.upper() for d in datas]

    async def scenario():
        batcher = MicroBatcher(analyze_many, max_images=16, max_queue=3)
        worker = asyncio.create_task(batcher.run())
        first = asyncio.create_task(batcher.submit([b"a"], True))
        await asyncio.sleep(0.05)  # the worker is now busy with the first request
        rest = [asyncio.create_task(batcher.submit(d, h))
                for d, h in (([b"b"], True), ([b"c", b"d"], True), ([b"f"], False))]
        await asyncio.sleep(0.01)
        with pytest.raises(UploadError, match="busy") as refused:
            await batcher.submit([b"e"], True)  # three already waiting = max_queue
        assert refused.value.status == 503
        out = await asyncio.gather(first, *rest)
        worker.cancel()
        return out, batcher.batch_sizes

    out, sizes = asyncio.run(scenario())
    assert out == [[b"A"], [b"B"], [b"C", b"D"], [b"F"]]
    assert calls[0] == ([b"a"], True) and calls[1] == ([b"b", b"c", b"d"], True)
    assert calls[2] == ([b"f"], False) and sizes == [1, 3, 1]


def test_a_severity_run_brings_its_stage_one_drawn_as_fitted(service_runs, tmp_path):
    import json
    import shutil

    from cxrlab.errors import InputError
    from cxrlab.serve.stages import create_stages

    stages = {s.role: s for s in create_stages({"opacity": service_runs["opacity"]}, backend="torch-fp32")}
    assert stages["lung"].card()["lung_output"] == "shared"
    run = tmp_path / "sev"
    shutil.copytree(service_runs["opacity"], run)
    spec = json.loads((run / "severity.json").read_text())
    (run / "severity.json").write_text(json.dumps({**spec, "lung_output": "v7"}))
    with pytest.raises(InputError, match="unknown lung convention 'v7'"):
        create_stages({"opacity": run}, backend="torch-fp32")


def test_a_configured_lung_model_is_matched_to_the_severity_scoring(service_runs, tmp_path, caplog):
    """The same lung run as the severity run's Stage I: drawn in the output the scoring was fitted with (an output
    it lacks is refused by name). Another lung run: served, but the log and both cards say the scoring was fitted
    on other lungs."""
    import json
    import logging
    import shutil

    from cxrlab.errors import InputError
    from cxrlab.serve.stages import create_stages

    spec = json.loads((service_runs["opacity"] / "severity.json").read_text())
    same = {"lung": service_runs["lung"], "opacity": service_runs["opacity"]}
    stages = {s.role: s for s in create_stages(same, backend="torch-fp32")}
    assert "stage_one_note" not in stages["opacity"].card() and "lung_output_note" not in stages["lung"].card()
    assert stages["opacity"].card()["fitted_with_lung_run"] == str(stages["opacity"].lung_run)

    run = tmp_path / "sev"
    shutil.copytree(service_runs["opacity"], run)
    lung_run = Path(spec["lung_run"]) if Path(spec["lung_run"]).is_absolute() else service_runs["opacity"] / spec["lung_run"]
    (run / "severity.json").write_text(json.dumps({**spec, "lung_run": str(lung_run), "lung_output": "v7"}))
    with pytest.raises(InputError, match="unknown lung convention 'v7'"):
        create_stages({"lung": lung_run, "opacity": run}, backend="torch-fp32")

    other = tmp_path / "other_lung"
    shutil.copytree(lung_run, other)
    with caplog.at_level(logging.WARNING, logger="cxrlab.serve.stages"):
        stages = {s.role: s for s in create_stages({"lung": other, "opacity": service_runs["opacity"]},
                                                     backend="torch-fp32")}
    note = stages["opacity"].card()["stage_one_note"]
    assert str(other) in note and "fitted with Stage I" in note and note in caplog.text
