"""The viewer in headless Chromium (Debian's ``chromium``, driven by Playwright): upload a phantom radiograph,
wait for the results, toggle and fade the heatmap, take a screenshot; with a similar-case index, the similar
cases panel (thumbnails, timelines). Skipped loudly without a browser."""

from __future__ import annotations

import contextlib
import shutil
import warnings

import pytest

import pandas as pd

from cxrlab.data.phantom import generate_phantom, render_sample
from cxrlab.serve import create_app, load_service_config, start_background
from cxrlab.serve.samples import encode_png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def _skip_loudly(reason: str) -> None:
    warnings.warn(f"VIEWER BROWSER TEST SKIPPED: {reason}", stacklevel=2)
    pytest.skip(f"VIEWER BROWSER TEST SKIPPED: {reason}")


def _playwright():
    if CHROMIUM is None:
        _skip_loudly("no chromium on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("playwright is not installed (pip install playwright)")
    return sync_playwright


@contextlib.contextmanager
def viewer_page(app, tmp_path):
    """The viewer of ``app`` open in headless Chromium: ``(page, errors)``, with the page's script errors."""
    sync_playwright = _playwright()
    server = start_background(app)
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            headless=True, args=ARGS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            page.wait_for_selector("#status:has-text('Ready')", timeout=15_000)
            yield page, errors
            context.close()
    finally:
        server.stop()


def test_viewer_upload_toggle_screenshot(service_runs, tmp_path):
    image = tmp_path / "phantom.png"
    image.write_bytes(encode_png(render_sample("covid19", severity=0.8, size=128, seed=7)["image"]))
    with viewer_page(create_app(load_service_config(service_runs["config"])), tmp_path) as (page, errors):
        assert "not for diagnosis" in page.inner_text("#notice")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#status[data-state=done]", timeout=60_000)

        assert page.locator("#contours polygon").count() >= 1  # lung outlines drawn over the image
        assert page.locator("#findings tr").count() >= 5  # four diagnoses + ICU risk
        assert page.locator("#zones rect").count() == 6
        assert page.evaluate("document.getElementById('base').naturalWidth") == 128
        assert not page.locator("#similar").is_visible()  # no case index configured: no similar-cases panel
        heat = page.locator("#heat")
        assert heat.evaluate("e => e.naturalWidth") == 128 and heat.is_visible()
        page.uncheck("#heat-toggle")
        assert not heat.is_visible()
        page.check("#heat-toggle")
        page.fill("#heat-opacity", "25")
        page.dispatch_event("#heat-opacity", "input")
        assert heat.evaluate("e => getComputedStyle(e).opacity") == "0.25"
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # a refused upload must not leave the previous film's findings and scores on screen
        bad = tmp_path / "not_an_xray.png"
        bad.write_bytes(b"GIF89a not an x-ray")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status[data-state=error]", timeout=60_000)
        assert page.locator("#findings tr").count() == 0 and page.locator("#zones rect").count() == 0
        assert not page.locator("#viewer").is_visible()
        assert errors == []


def test_viewer_similar_cases_panel(service_runs, tmp_path):
    """A service with a phantom case index: after an analysis the panel lists k patients, each with the best
    film's thumbnail (fetched by index row), similarity, finding, outcomes and the timeline of films in day
    order; a refused upload clears it."""
    from cxrlab.retrieval import Embedder, build_index, embed

    cases = tmp_path / "cases"
    generate_phantom(cases, n_patients=5, size=128, seed=3, max_studies=3)
    emb = embed(Embedder.create("efficientnet_lite0", size=64, precision="fp32"), cases, tmp_path / "emb.parquet")
    index = build_index(emb, tmp_path / "cases.index")
    manifest = pd.read_csv(cases / "manifest.csv")
    patient = manifest["patient_id"].value_counts().index[0]  # one with several films
    query = cases / manifest.loc[manifest["patient_id"] == patient, "image"].iloc[-1]
    k = 3
    config = load_service_config(service_runs["config"], similar={"index": str(index), "k": k})
    with viewer_page(create_app(config), tmp_path) as (page, errors):
        assert not page.locator("#similar").is_visible()  # nothing to show before an upload
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#status[data-state=done]", timeout=60_000)
        page.wait_for_selector("#similar[data-state=done]", timeout=60_000)
        panel = page.locator("#similar")
        assert panel.is_visible() and "research use only" in panel.inner_text().lower()
        cards = page.locator("#similar-list li")
        assert cards.count() == k
        # the query film is indexed: its own patient comes first, with the whole timeline in day order
        assert cards.nth(0).get_attribute("data-patient") == patient
        expected = sorted(manifest.loc[manifest["patient_id"] == patient, "offset_days"])
        days = cards.nth(0).locator(".timeline span").all_inner_texts()
        assert [int(d) for d in days] == expected and len(days) > 1
        assert cards.nth(0).locator(".timeline span.best").count() == 1
        for i in range(k):
            card = cards.nth(i)
            assert card.locator("img").evaluate("e => e.complete && e.naturalWidth") > 0
            assert card.locator(".timeline span").count() >= 1
            assert "similarity" in card.inner_text() and card.locator(".outcomes").count() == 1
        assert "similarity 1.00" in cards.nth(0).inner_text()
        page.screenshot(path=str(tmp_path / "similar.png"), full_page=True)
        # a refused upload clears the panel with the rest of the results
        bad = tmp_path / "not_an_xray.png"
        bad.write_bytes(b"GIF89a not an x-ray")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status[data-state=error]", timeout=60_000)
        assert not panel.is_visible() and page.locator("#similar-list li").count() == 0
        assert errors == []
