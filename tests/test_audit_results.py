"""audit.json's typed results: read and written back byte for byte, frozen, and an older file is refused in one
line that names the fix."""

import dataclasses
import json

import pytest
import torch
from audit_helpers import CONFIRMED, audit_json, candidate

from gradcam_repro.errors import UserError
from gradcam_repro.measure.audit_results import AuditCandidate, AuditClass, AuditResult
from gradcam_repro.measure.results import Interval
from gradcam_repro.pipeline.repair import artefact_from_audit


def _text(values: dict) -> str:
    return json.dumps(values, indent=2) + "\n"  # as store.write_json writes it


@pytest.mark.parametrize("values", [
    audit_json([candidate(1, "frog", CONFIRMED, artefact_clusters=[0], artefact_images=40),
                candidate(2, "deer", "none", kind="relevance only")]),
    # --patch-test-fraction: the ground-truth keys, the planted box and each candidate's overlap with it (NaN:
    # an adjusted Rand index over fewer than two true images)
    audit_json([candidate(1, "frog", CONFIRMED, iou_with_planted_box=1.0, artefact_clusters=[0], artefact_images=40)],
               ground_truth=True),
    audit_json([candidate(1, "frog", "none", pixels=None)]),  # written before the pixels were recorded
    audit_json([]),
], ids=["confirmed", "planted patch", "no pixels", "no candidate"])
def test_audit_json_is_read_and_written_back_byte_for_byte(values):
    text = _text(values)
    assert _text(AuditResult.from_dict(json.loads(text)).to_dict()) == text


def test_the_typed_result_reads_what_the_file_says():
    values = audit_json([candidate(1, "frog", CONFIRMED, iou_with_planted_box=1.0, artefact_clusters=[0], artefact_images=40)],
                        ground_truth=True)
    result = AuditResult.from_dict(values)
    found = result.candidates[0]
    assert (found.class_name, found.box_tlbr_px, found.verdict) == ("frog", (0, 0, 6, 6), CONFIRMED)
    assert found.transplant_flip == Interval(0.95, 0.93, 0.97, 500) and found.artefact_clusters == (0,)
    assert torch.tensor(found.pixels).shape == (3, 6, 6)
    frog, deer = result.classes["frog"], result.classes["deer"]
    assert frog.discovered and frog.clusters[1].region is None and frog.adjusted_rand_index_all == 0.97
    assert not deer.discovered and deer.clusters == ()
    assert result.ranking[0].class_name == "frog" and result.confirmed == ("frog",)
    assert result.planted_box_tlbr_px == (0, 0, 6, 6)


def test_the_results_are_frozen():
    result = AuditResult.from_dict(audit_json([candidate(1, "frog", CONFIRMED)]))
    for obj, name in ((result, "candidates"), (result.candidates[0], "verdict"), (result.classes["frog"], "n_images"),
                      (result.classes["frog"].clusters[0], "score"), (result.ranking[0], "score")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
    assert isinstance(result.candidates, tuple) and isinstance(result.candidates[0].pixels, tuple)


@pytest.mark.parametrize("drop, where", [
    (lambda v: v.pop("default_method_layer"), "audit.json"),
    (lambda v: v["candidates"][0].pop("removal_change"), "audit.json (candidate 1)"),
    (lambda v: v["classes"]["frog"].pop("eigengap"), "audit.json (class frog)"),
    (lambda v: v["classes"]["frog"]["clusters"][0].pop("region"), "audit.json (class frog)"),
])
def test_a_file_from_an_older_version_is_refused_in_one_line_that_names_the_fix(drop, where):
    values = audit_json([candidate(1, "frog", CONFIRMED)])
    drop(values)
    with pytest.raises(UserError) as caught:
        AuditResult.from_dict(values)
    message = str(caught.value)
    assert message.startswith(f"{where} was written by an older gradcam-repro (no '") and "\n" not in message
    assert message.endswith("fix: rerun `gradcam-repro audit` to rewrite it with this version")


def test_repair_from_an_older_audit_gives_the_older_version_error(tmp_path):
    values = audit_json([candidate(1, "frog", CONFIRMED)])
    del values["candidates"][0]["transplant_flip"]
    (tmp_path / "audit.json").write_text(json.dumps(values))
    with pytest.raises(UserError) as caught:
        artefact_from_audit(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'audit.json'} (candidate 1) was written by an older gradcam-repro "
                                        "(no 'transplant_flip'); fix: rerun `gradcam-repro audit`")


def test_an_audit_without_the_pixels_gives_a_constant_artefact_of_their_mean_colour(tmp_path):
    (tmp_path / "audit.json").write_text(json.dumps(audit_json([candidate(1, "frog", CONFIRMED, pixels=None)])))
    found = artefact_from_audit(tmp_path)
    assert found.box == (0, 0, 6, 6) and found.class_name == "frog"
    assert found.pixels[:, 0, 0].tolist() == [255, 255, 0] and found.pixels.unique().tolist() == [0, 255]


def test_a_skipped_class_keeps_only_why():
    skipped = AuditClass(3, "too few")
    assert skipped.to_dict() == {"n_images": 3, "skipped": "too few"}
    assert AuditClass.from_dict(skipped.to_dict()) == skipped
    assert AuditCandidate.from_dict(candidate(1, "frog", "none")).to_dict() == candidate(1, "frog", "none")
    # Audit rules 6 leave the occluded control out below the candidate bar: recorded as null, read back as None.
    unmeasured = {**candidate(1, "frog", "none"), "occluded_flip": None}
    assert AuditCandidate.from_dict(unmeasured).occluded_flip is None
    assert AuditCandidate.from_dict(unmeasured).to_dict() == unmeasured
