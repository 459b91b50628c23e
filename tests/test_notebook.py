"""notebooks/quickstart.ipynb runs end to end (shapes smoke preset), so it cannot rot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _outputs(nb) -> tuple[str, int, str]:
    """(all text output, number of PNG outputs, all HTML output) of an executed notebook."""
    text, pngs, html = [], 0, []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            text.append(data.get("text/markdown", "") + data.get("text/plain", ""))
            pngs += "image/png" in data
            html.append(data.get("text/html", ""))
    return "".join(text), pngs, "".join(html)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_shows_figures_verdicts_and_an_explanation(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GRADCAM_NOTEBOOK_CI", "1")  # skip the pip install cell: the package is installed
    monkeypatch.setenv("GRADCAM_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'PRESET = "smoke"' in parameters.source and 'DATASET = "shapes"' in parameters.source
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    text, pngs, html = _outputs(nb)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["preset"] == "smoke" and metrics["dataset"]["name"] == "shapes"
    assert "device: cpu" in text or "device: cuda" in text
    assert "CI: using the installed gradcam-repro" in text
    # The verdicts, the inline figures, the report in a frame and the explanation of the drawn image.
    assert "The biased model" in text and "The baseline model" in text
    figures_shown = sum(Path(out, rel).is_file() for rel in
                        ["figures/layer_sweep.png", "figures/side_by_side.png", "figures/layers_one_image.png"])
    explained = sorted((out / "explanations").glob("example_*.png"))
    assert figures_shown >= 2 and len(explained) == 1
    assert pngs == figures_shown + len(explained)
    assert "<iframe srcdoc=" in html and "gallery-root" in html
    assert "example.png: biased:" in text and "example.png: baseline:" in text  # the top-3 classes per model


ANY_MODEL = NOTEBOOK.parent / "any_model.ipynb"


@pytest.mark.slow
def test_the_any_model_notebook_trains_explains_and_audits_a_timm_vit():
    nb = nbformat.read(ANY_MODEL, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(ANY_MODEL.parent)}}).execute()
    text, pngs, _ = _outputs(nb)
    assert "test accuracy" in text and pngs == 1
    # gr.explain chose the ViT's last norm1 by the rule and laid its tokens out on the image.
    assert "layer: blocks.1.norm1; maps (6, 32, 32)" in text
    # gr.audit ran on the same rule's layer and reported its verdicts.
    assert "layer: blocks.1.norm1; confirmed:" in text and "pasted on other classes -> " in text
    # gr.measure_shortcut and gr.repair: the last-layer repair of a copy lowers the flip rate it measured before.
    flips = re.search(r"before ([\d.]+)% .* after the last-layer repair ([\d.]+)%", text)
    assert flips is not None and "energy in the patch at blocks.1.norm1" in text
    assert float(flips.group(2)) < float(flips.group(1)), flips.group(0)
