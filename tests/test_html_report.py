"""REPORT.html: one self-contained page to look at, checked in a real headless Chromium.

The browser test needs the Debian `chromium` package (.ci/run installs it) and Playwright's Python API
(the `test` extra), pointed at the system browser: Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import sync_playwright

from gradcam_repro.cli import main
from gradcam_repro.explain.registry import PIXEL_METHODS, display_name
from gradcam_repro.measure.comparison_results import MethodsResult, StaleMethods
from gradcam_repro.measure.results import RunMetrics
from gradcam_repro.measure.scores import cam_energy_in_box
from gradcam_repro.pipeline import view
from gradcam_repro.report.html import report_html

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "ci-artifacts"
PNG_URI = "data:image/png;base64,"


def _load(run: Path) -> tuple[dict, dict, str]:
    return (json.loads((run / "metrics.json").read_text()), json.loads((run / "gallery.json").read_text()),
            (run / "REPORT.html").read_text())


def _decode_map(b64: str) -> torch.Tensor:
    """A gallery map PNG back to (H, W) in [0, 1]: its palette indices are round(255 * map)."""
    picture = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert picture.mode == "P"
    return torch.from_numpy(np.array(picture, dtype=np.float32) / 255)


def test_the_page_is_one_file_that_refers_to_no_other_address(shapes_run):
    metrics, _, page = _load(shapes_run)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:|//|file:)""", page, re.I)
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|@import|url\(", page, re.I)
    # Every figure of the run is inline, byte for byte.
    for rel in metrics["figures"]:
        assert PNG_URI + base64.b64encode((shapes_run / rel).read_bytes()).decode() in page, rel
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert sources and all(s.startswith(PNG_URI) for s in sources)
    assert len(page.encode()) < 5e6  # a smoke run's page stays small enough to mail


def test_the_gallery_holds_every_model_method_and_layer_with_its_measured_energy(shapes_run):
    metrics, g, _ = _load(shapes_run)
    cls = metrics["config"]["bias_class"]
    assert g["experiments"] == metrics["experiments"] and g["target"] == cls
    n = len(g["images"])
    assert n == 12 and sum(g["patched_target"]) == 6  # patched target images whatever the models call them
    assert all(label == cls for label, target in zip(g["labels"], g["patched_target"]) if target)
    assert all(label != cls for label, target in zip(g["labels"], g["patched_target"]) if not target)
    assert list(g["layers"]) == [metrics["config"]["cam"], "hirescam", "layercam", "inputxgradient"]
    assert g["layers"]["inputxgradient"] == ["input"] and g["layers"]["hirescam"] == metrics["layers"]
    top, left, bottom, right = g["box_tlbr_px"]
    color = torch.tensor(metrics["config"]["patch_color"], dtype=torch.uint8)
    for b64 in g["images"]:  # every image shows the patch
        image = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(b64))))).permute(2, 0, 1)
        assert (image[:, top:bottom, left:right] == color[:, None, None]).all()
    for name, entry in g["models"].items():
        assert entry["flipped"] == [c != cls and s == cls for c, s in zip(entry["clean"], entry["shown"])]
        for method, layers in g["layers"].items():
            for layer in layers:
                maps = torch.stack([_decode_map(b) for b in entry["maps"][method][layer]])
                assert maps.shape == (n, g["size_px"], g["size_px"])
                # The energy shown is the energy in the box of the map shown (up to 8-bit rounding).
                energy = torch.tensor(entry["energy"][method][layer])
                assert torch.allclose(cam_energy_in_box(maps, g["box_tlbr_px"]), energy, atol=0.02), (name, method, layer)


def test_report_rebuilds_the_same_page_without_any_model(shapes_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shapes_run, copy)
    original = (copy / "REPORT.html").read_text()
    shutil.rmtree(copy / "experiments")
    (copy / "REPORT.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "REPORT.html").read_text() == original
    # Without gallery.json (an older run) the page says how to get one instead of breaking.
    (copy / "gallery.json").unlink()
    assert main(["report", str(copy)]) == 0
    page = (copy / "REPORT.html").read_text()
    assert "gradcam-repro evaluate RUN</code> writes it" in page and 'id="gallery-root"' not in page


def test_a_stale_methods_json_is_named_and_the_verdicts_follow_the_numbers(shapes_run):
    metrics, gallery, _ = _load(shapes_run)
    assert "compare RUN" in report_html(RunMetrics.from_dict(metrics), StaleMethods({}), gallery, {})
    biased = metrics["models"]["biased"]
    biased["flip_to_target"]["patch"] = {"mean": 0.97, "low": 0.95, "high": 0.99, "n": 200}
    biased["verdict"]["relies_on_patch"] = True
    page = report_html(RunMetrics.from_dict(metrics), None, gallery, {})
    assert "The biased model relies on the patch" in page and "97.0%" in page


def _stat(mean: float, n: int = 4) -> dict:
    return {"mean": mean, "low": mean - 0.01, "high": mean + 0.01, "n": n}


def test_compare_section_shows_every_method_with_intervals_flags_and_checks(shapes_run):
    metrics, gallery, _ = _load(shapes_run)
    score = {"energy": _stat(0.4321), "pointing": _stat(0.75)}
    methods = MethodsResult.from_dict({  # methods.json, as `gradcam-repro compare` writes it, for two methods
        "methods": ["gradcam", "saliency"], "layers": ["layer3"], "cam_layer": "layer3", "experiments": metrics["experiments"],
        "settings": {"images": 4, "scorecam_images": 1, "sanity_images": 2, "faithfulness_images": 4, "pixels_per_step": 64,
                     "deletion_baseline": "mean colour", "insertion_canvas": "blur", "sanity_max_spearman": 0.5,
                     "precision": "float32"},
        "seconds": {"total": 1.0},
        "uniform": {"energy_in_box": 0.0352, "pointing": 0.0977},
        "shortcut": {"gradcam": {"layer3": {"biased": score, "baseline": score}}, "saliency": {"input": {"biased": score}}},
        "flags_shortcut": {"gradcam": {"layer3": True}, "saliency": {"input": False}},
        "sanity": {m: {"layer": "layer3", "steps": [],
                       "verdict": {"step": "layer3", "spearman": _stat(0.1234), "ssim": _stat(0.2), "passes": m == "gradcam",
                                   "threshold": 0.5}} for m in ("gradcam", "saliency")},
        "faithfulness": {m: {"deletion_auc": _stat(0.2468), "insertion_auc": _stat(0.1357)} for m in ("gradcam", "random")},
        "figures": ["figures/methods_layers.png"], "environment": {"device": "cpu"},
    })
    png = (shapes_run / metrics["figures"][0]).read_bytes()
    page = report_html(RunMetrics.from_dict(metrics), methods, gallery, {"figures/methods_layers.png": png})
    section = page[page.index('<section id="methods">'):]
    section = section[:section.index("</section>")]
    for text in ("Grad-CAM", "Saliency", "random map", "0.432", "[0.422, 0.442]", "0.123", "0.247", "0.136",
                 '<span class="badge yes">flags</span>', "passes", "fails", PNG_URI + base64.b64encode(png).decode()):
        assert text in section, text
    assert section.count("<tr>") == 3 + 2 + 2 + 2  # three tables: a header row each, then two rows each
    assert 'href="#methods"' in page


def test_view_without_a_report_is_a_one_line_error_naming_the_fix(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"gradcam-repro report {tmp_path}" in err


def test_view_opens_the_file_in_the_browser(shapes_run, monkeypatch, capsys):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert main(["view", str(shapes_run)]) == 0
    assert opened == [(shapes_run / "REPORT.html").resolve().as_uri()]
    assert str((shapes_run / "REPORT.html").resolve()) in capsys.readouterr().out


def test_view_serve_serves_the_run_folder_on_localhost(shapes_run):
    server = view.make_server(shapes_run, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = view.report_url(server)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/REPORT.html")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == (shapes_run / "REPORT.html").read_bytes()
        with urllib.request.urlopen(url.replace("REPORT.html", "metrics.json"), timeout=10) as response:
            assert json.loads(response.read())["experiments"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _system_chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


@pytest.fixture(scope="module")
def browser():
    executable = _system_chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH; CI must install it (.ci/run: apt-get install -y chromium)")
        pytest.skip("no system chromium found (`apt-get install chromium`); in CI this test fails instead")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


def _shown(page) -> list[str]:
    return page.eval_on_selector_all("#gallery-root img.heat", "els => els.map(e => e.getAttribute('src'))")


def _expected(g: dict, model: str, method: str, layer: str) -> list[str]:
    return [PNG_URI + b for b in g["models"][model]["maps"][method][layer]]


def _check_verdicts(page, metrics: dict) -> None:
    """The verdict lines at the top say what metrics.json says, in words."""
    layer, cam = metrics["cam_layer"], display_name(metrics["config"]["cam"])
    for name, r in metrics["models"].items():
        v = r["verdict"]

        def line(key: str, name: str = name) -> str:
            return page.inner_text(f'.verdict[data-model="{name}"][data-verdict="{key}"]')

        assert line("relies_on_patch") == f"The {name} model {'relies' if v['relies_on_patch'] else 'does not rely'} on the patch"
        assert line("points_at_patch").endswith(
            f"at {layer} {'points' if v['points_at_patch'][layer] else 'does not point'} at the patch")
        assert line("points_at_patch").startswith(cam)
        assert line("agrees") == f"Explanation and behaviour {'agree' if v['agrees'][layer] else 'disagree'} at {layer}"
        flip = f"{100 * r['flip_to_target']['patch']['mean']:.1f}%"
        assert flip in page.inner_text(f'.card:has(.verdict[data-model="{name}"])')


def test_the_report_in_a_real_browser(shapes_run, browser):
    metrics, g, _ = _load(shapes_run)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((shapes_run / "REPORT.html").as_uri(), wait_until="load")
    decoded = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
    assert len(decoded) >= len(metrics["figures"]) + 2 * len(g["images"])
    assert all(done and width > 0 for done, width, _ in decoded), [alt for done, width, alt in decoded if not width]
    _check_verdicts(page, metrics)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"))

    model, method = page.get_attribute("#gallery-root", "data-model"), page.get_attribute("#gallery-root", "data-method")
    first = _shown(page)
    assert first == _expected(g, model, method, page.get_attribute("#gallery-root", "data-layer"))
    # Switching the layer changes the maps to that layer's (pick one whose maps differ from those shown).
    layer = next(x for x in sorted(g["layers"][method], key=lambda x: x != "layer3")  # layer3 first: the README shot
                 if _expected(g, model, method, x) != first)
    page.click(f'#gallery-root button[data-group="layer"][data-value="{layer}"]')
    assert _shown(page) == _expected(g, model, method, layer) != first
    # A pixel-space method has one map at the input; the CAM layers are greyed out.
    pixel = next(x for x in g["layers"] if x in PIXEL_METHODS)
    page.click(f'#gallery-root button[data-group="method"][data-value="{pixel}"]')
    assert _shown(page) == _expected(g, model, pixel, "input")
    assert page.is_disabled(f'#gallery-root button[data-group="layer"][data-value="{layer}"]')
    # Back to a CAM method: the chosen layer is kept.
    other = next(x for x in g["layers"] if x not in PIXEL_METHODS and x != method)
    page.click(f'#gallery-root button[data-group="method"][data-value="{other}"]')
    assert _shown(page) == _expected(g, model, other, layer)
    caption = page.inner_text("#gallery-root .tile >> nth=0")
    assert f"{g['models'][model]['energy'][other][layer][0]:.3f}" in caption and g["labels"][0] in caption
    page.add_style_tag(content="nav { position: static !important; }")  # keep the sticky bar out of the shot
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.locator("#gallery").screenshot(path=str(ARTIFACTS / "report-gallery.png"))
    assert not errors, errors
