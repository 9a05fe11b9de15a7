"""The viewer in headless Chromium (Debian's ``chromium``, driven by Playwright): upload a phantom radiograph,
wait for the results, toggle and fade the heatmap, take a screenshot. Skipped loudly without a browser."""

from __future__ import annotations

import shutil
import warnings

import pytest

from cxrlab.data.phantom import render_sample
from cxrlab.serve import create_app, load_service_config, start_background
from cxrlab.serve.samples import encode_png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def _skip_loudly(reason: str) -> None:
    warnings.warn(f"VIEWER BROWSER TEST SKIPPED: {reason}", stacklevel=2)
    pytest.skip(f"VIEWER BROWSER TEST SKIPPED: {reason}")



def test_viewer_upload_toggle_screenshot(service_runs, tmp_path):
    if CHROMIUM is None:
        _skip_loudly("no chromium on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("playwright is not installed (pip install playwright)")
    image = tmp_path / "phantom.png"
    image.write_bytes(encode_png(render_sample("covid19", severity=0.8, size=128, seed=7)["image"]))
    server = start_background(create_app(load_service_config(service_runs["config"])))
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            headless=True, args=ARGS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            assert "not for diagnosis" in page.inner_text("#notice")
            page.wait_for_selector("#status:has-text('Ready')", timeout=15_000)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#status[data-state=done]", timeout=60_000)

            assert page.locator("#contours polygon").count() >= 1  # lung outlines drawn over the image
            assert page.locator("#findings tr").count() >= 5  # four diagnoses + ICU risk
            assert page.locator("#zones rect").count() == 6
            assert page.evaluate("document.getElementById('base').naturalWidth") == 128
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
            context.close()
    finally:
        server.stop()
