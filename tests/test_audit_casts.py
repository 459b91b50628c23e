"""The audit's global colour-cast scan (`measure.casts`): what it shifts, what it finds on a model that reads a
cast, how audit.json keeps it and how AUDIT.md and the final line say it (a measurement, never a verdict)."""

from __future__ import annotations

import json

import torch
from audit_helpers import audit_json, candidate, rate
from torch import nn

import gradcam_repro as gr
from gradcam_repro.measure import casts
from gradcam_repro.measure.audit_results import AuditResult, ColourCast
from gradcam_repro.report.audit_report import audit_markdown, overall_verdict
from gradcam_repro.runtime import Runtime

CPU = Runtime(torch.device("cpu"))


def test_a_cast_shifts_every_pixel_by_its_levels_per_channel_and_clips():
    images = torch.tensor([0, 100, 250], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 5).contiguous()
    shifted = casts.cast(images, (1, -1, 1), 8)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    assert shifted[:, :, 0, 0].tolist() == [[8, 92, 255], [8, 92, 255]]  # 250 + 8 clips at 255
    assert casts.cast(images, (-1, 0, 0), 8)[0, :, 0, 0].tolist() == [0, 100, 250]  # 0 - 8 clips at 0
    assert len(casts.DIRECTIONS) == 26 and (0, 0, 0) not in casts.DIRECTIONS


class _RedOverGreen(nn.Module):
    """Class 1 where the mean red exceeds the mean green by more than 12 levels, else class 0 (the contract's
    mean 0 and std 1 make the inputs pixels / 255). Only a cast that raises red and lowers green (16 levels)
    crosses that line from images where red equals green; one that moves one channel (8 levels) does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (x[:, 0] - x[:, 1]).mean(dim=(1, 2)) * 255 - 12
        return torch.stack([-margin, margin], dim=1)


def _red_over_green() -> nn.Module:
    return gr.with_contract(_RedOverGreen(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), classes=("plain", "pink"))


def test_the_scan_finds_the_cast_a_model_reads_and_measures_it_again_on_other_images():
    grey = torch.randint(40, 200, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = grey.expand(300, 3, 8, 8).contiguous()  # red = green = blue: every image is "plain"
    model = _red_over_green()
    predictions = torch.zeros(300, dtype=torch.int64)
    rows = casts.scan_casts(model, images, predictions, ("plain", "pink"), CPU, seed=0)
    pink = rows[0]
    assert pink["class"] == "pink" and pink["direction"][:2] == [1, -1] and pink["levels"] == casts.CAST_LEVELS
    assert pink["scan_flip"] == 1.0  # every scanned image turns pink
    assert pink["flip"]["mean"] == 1.0 and pink["flip"]["n"] == casts.CHECK_IMAGES  # and every checked one
    plain = rows[1]  # no image was "pink" before, so none can turn "plain": an empty pool, measured as such
    assert plain["class"] == "plain" and plain["scan_flip"] == 0.0 and plain["flip"]["n"] == 0


def _cast(class_name: str, direction, mean: float, scan: float) -> dict:
    return {"class": class_name, "direction": list(direction), "levels": 8, "scan_flip": scan,
            "flip": rate(mean, mean - 0.07, mean + 0.07, 180)}


def _with_casts(values: dict, rows: list[dict]) -> dict:
    """audit.json with the scan's rows, where `gradcam-repro audit` writes them (after "confirmed")."""
    values = dict(values)
    values["settings"] = values["settings"] | {"colour_casts": casts.settings_record()}
    tail = {key: values.pop(key) for key in ("planted_box_tlbr_px", "seconds", "figures") if key in values}
    return values | {"colour_casts": rows} | tail


def test_audit_json_keeps_the_scan_and_reads_older_files_without_it():
    values = _with_casts(audit_json([candidate(1, "frog", "none", kind="relevance only")]),
                         [_cast("frog", (1, -1, 1), 0.435, 0.46), _cast("deer", (-1, 1, -1), 0.12, 0.15)])
    text = json.dumps(values, indent=2) + "\n"
    result = AuditResult.from_dict(json.loads(text))
    assert json.dumps(result.to_dict(), indent=2) + "\n" == text  # byte for byte, key order included
    assert result.colour_casts[0] == ColourCast("frog", (1, -1, 1), 8, 0.46, result.colour_casts[0].flip)
    assert result.colour_casts[0].rgb_levels == (8, -8, 8) and result.colour_casts[0].flip.mean == 0.435
    assert AuditResult.from_dict(audit_json([])).colour_casts is None  # an audit written before the scan


def test_the_report_gives_the_casts_as_a_measurement_and_the_final_line_names_the_strongest():
    nothing_found = _with_casts(audit_json([candidate(1, "frog", "none", kind="relevance only")]),
                                [_cast("frog", (1, -1, 1), 0.435, 0.46), _cast("deer", (-1, 1, -1), 0.12, 0.15)])
    result = AuditResult.from_dict(nothing_found)
    line = overall_verdict(result)
    assert "no localised artefact found" in line
    assert "a global colour cast of (+8, -8, +8) levels turns 44% of other images into frog" in line
    assert "no verdict" in line
    report = audit_markdown(result)
    assert "## Global colour casts (measured, no verdict)" in report
    assert "| frog | (+8, -8, +8) | 43.5% [36.5, 50.5] | 46.0% |" in report
    # With other classes flagged, as on the benchmark's tint models, the cast is still named.
    flagged = dict(nothing_found, unexplained=[{"class": "automobile", "fixed_place_ratio": 3.9, "peak_ratio": 2.0,
                                                "reason": "its relevance stands out"}])
    line = overall_verdict(AuditResult.from_dict(flagged))
    assert "unexplained concentration: automobile" in line and "turns 44% of other images into frog" in line
    # A confirmed finding is the line's subject: the cast stays in AUDIT.md only.
    confirmed = AuditResult.from_dict(_with_casts(audit_json([candidate(1, "frog", "confirmed shortcut")]),
                                                  [_cast("deer", (-1, 1, -1), 0.12, 0.15)]))
    assert "colour cast" not in overall_verdict(confirmed) and "## Global colour casts" in audit_markdown(confirmed)
    assert "## Global colour casts" not in audit_markdown(AuditResult.from_dict(audit_json([])))


def test_the_python_audit_scans_casts_unless_told_not_to_and_the_scan_changes_nothing_else():
    """End to end on the red-over-green model: the audit's strongest cast is the pink one, measured on other images;
    `colour_casts=False` leaves the scan out, records that it did, and every other finding is the same."""
    generator = torch.Generator().manual_seed(1)
    grey = torch.randint(40, 200, (120, 1, 16, 16), generator=generator, dtype=torch.uint8).expand(120, 3, 16, 16)
    images = grey.clone()
    images[60:, 0] = (images[60:, 1].int() + 30).clamp(max=255).to(torch.uint8)  # half the images are pink
    labels = (torch.arange(120) >= 60).long()
    data = (images, labels, ("plain", "pink"))
    scanned = gr.audit(_red_over_green(), data, method="inputxgradient")
    strongest = scanned.colour_casts[0]
    assert strongest.class_name == "pink" and strongest.direction[:2] == (1, -1)
    assert strongest.flip.mean == 1.0 and strongest.flip.n > 0  # every plain image a pink cast reaches turns pink
    assert scanned.settings["colour_casts"]["levels"] == casts.CAST_LEVELS
    unscanned = gr.audit(_red_over_green(), data, method="inputxgradient", colour_casts=False)
    assert unscanned.colour_casts is None and unscanned.settings["colour_casts"] is None
    for key in ("classes", "ranking", "candidates", "confirmed", "unexplained"):
        assert getattr(scanned, key) == getattr(unscanned, key), key
