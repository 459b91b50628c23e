"""A small hand-built audit.json, key for key as `gradcam-repro audit` writes it, for tests that read one, and the
pieces the tests of the audit's effect tests (a pattern, a blur) share."""

import torch

from gradcam_repro.measure import spray
from gradcam_repro.measure.audit_results import AuditCandidate, AuditResult
from gradcam_repro.measure.predict import predict
from gradcam_repro.runtime import Runtime

CONFIRMED = "confirmed shortcut"


def rate(mean: float, low: float, high: float, n: int = 500) -> dict:
    return {"mean": mean, "low": low, "high": high, "n": n}


def candidate(rank: int, class_name: str, verdict: str, **keys) -> dict:
    """A tested candidate: a 6x6 yellow square at the top-left corner, unless `keys` say otherwise (a key given
    as None is left out, as in audits that lack it)."""
    out = {"rank": rank, "class": class_name, "cluster": 0, "n": 40, "box_tlbr_px": [0, 0, 6, 6], "kind": "constant pixels",
           "relevance_box_tlbr_px": [0, 0, 8, 8], "constant_px": 36, "mean_rgb": [255.0, 255.0, 0.0],
           "pixels": [[[v] * 6 for _ in range(6)] for v in (255, 255, 0)],
           "transplant_flip": rate(0.95, 0.93, 0.97), "occluded_flip": rate(0.02, 0.01, 0.03),
           "untouched": rate(0.02, 0.01, 0.03), "removal_change": rate(0.9, 0.8, 0.95), "verdict": verdict,
           "reason": "the region's pixels alone turn 95% of other classes' images into this class (occluding it: 2%)"}
    return {key: value for key, value in (out | keys).items() if value is not None}


def cluster(index: int, n: int, region: dict | None, **keys) -> dict:
    return {"cluster": index, "n": n, "fixed_place": rate(0.5, 0.45, 0.55, n), "uniform": 0.0625, "score": 7.2,
            "region": region, **keys}


def audit_json(candidates: list[dict], ground_truth: bool = False) -> dict:
    """audit.json with the given candidates: one class clustered (two clusters, the second too small for a
    region), one skipped; with `ground_truth`, a patch pasted on the clustered class for checking (the keys
    `--patch-test-fraction` adds)."""
    region = {"box": [0, 0, 6, 6], "kind": "constant pixels", "relevance_box": [0, 0, 8, 8], "constant_px": 36}
    share = ({"patched_share": 1.0}, {"patched_share": 0.0}) if ground_truth else ({}, {})
    frog = {"n_images": 48, "eigenvalues": [0.0, 0.4, 0.9], "n_clusters": 2, "eigengap": 0.5,
            "fixed_place": rate(0.45, 0.4, 0.5, 48), "clusters": [cluster(0, 40, region, **share[0]),
                                                                 cluster(1, 8, None, **share[1])]}
    if ground_truth:
        frog |= {"n_patched": 40, "patched_share_true": 0.8, "adjusted_rand_index": float("nan"),
                 "adjusted_rand_index_all": 0.97, "adjusted_rand_index_artefact": 0.99}
    settings = {"method": "hirescam", "layer": "layer2", "seed": 0, "top_candidates": 3, "transplant_images": 1000,
                "embed_grid": 8, "knn_neighbours": 10, "max_clusters": 6, "min_class_images": 20, "min_cluster_images": 10,
                "fixed_place_px": 64, "region_threshold": 0.5, "search_margin_px": 4, "constant_pixel_ratio": 0.25,
                "removal_ring_px": 2, "confirm_flip_rate": 0.5, "candidate_flip_rate": 0.1, "candidate_removal_rate": 0.5,
                "bootstrap_resamples": 1000, "confidence": 0.95}
    dataset = {"name": "shapes", "source": "generated", "fingerprint": "0" * 64, "n_test": 100, "classes": ["frog", "deer"]}
    out = {"target": "runs/x", "model": "runs/x/experiments/1/model.pt", "experiment": "biased", "dataset": dataset,
           "default_method_layer": True, "precision": "fp32", "environment": {"device": "cpu"}, "n_test": 100,
           "settings": settings, "classes": {"frog": frog, "deer": {"n_images": 3, "skipped": "too few"}},
           "ranking": [{"class": "frog", "cluster": 0, "score": 7.2, "n": 40}], "candidates": candidates,
           "confirmed": [c["class"] for c in candidates if c["verdict"] == CONFIRMED]}
    if ground_truth:
        out["planted_box_tlbr_px"] = [0, 0, 6, 6]
    return out | {"seconds": {"audit": 1.5, "end_to_end": 2.0}, "figures": ["figures/audit_ranking.png"]}


def one_cluster_class(box: tuple, n: int = 60) -> tuple[dict, dict]:
    """(record, examples) of a class for `spray.test_class`: its first `n` images in one relevance-only cluster
    whose region is `box`, and no per-image group to test."""
    record = {"clusters": [{"cluster": 0, "n": n, "score": 5.0, "region": {
        "box": box, "kind": "relevance only", "relevance_box": box, "constant_px": 0}}], "peak_clusters": []}
    examples = {"members": torch.arange(n), "cluster_ids": torch.zeros(n, dtype=torch.long),
                "peak_ids": torch.zeros(n, dtype=torch.long)}
    return record, examples


def grey_noise(n: int, seed: int, side: int = 16) -> torch.Tensor:
    """(n, 3, side, side) uint8, uniform in [90, 110]: fine detail everywhere (a mean absolute 3x3 residual of about 4
    levels, an RMS of about 5: of the order of a photo's, CIFAR-10's 12.7) and nothing many images share."""
    return torch.randint(90, 111, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def coded_set(carry, seed: int = 7, side: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, patched) of 60 `grey_noise` images per class of 3, the class coded in the mean green level
    (80, 100, 120), and the first 30 of class 0 passed through `carry` (the artefact), which `patched` marks."""
    labels = torch.arange(3).repeat_interleave(60)
    images = grey_noise(180, seed, side)
    images[:, 1] = (images[:, 1].to(torch.int16) - 100 + 80 + 20 * labels.view(-1, 1, 1)).to(torch.uint8)
    images[:30] = carry(images[:30])
    patched = torch.zeros(180, dtype=torch.bool)
    patched[:30] = True
    return images, labels, patched


def one_cluster_finding(model, data, box: tuple, runtime) -> tuple[dict, AuditCandidate]:
    """`spray.test_class` of class "a" (`one_cluster_class(box)`, no relevance maps) on `data` as `model` predicts it:
    (the class's best test record, its candidate), the candidate checked to round-trip through its dict."""
    predictions = predict(model, data.images, runtime)
    record, examples = one_cluster_class(box)
    maps = torch.zeros(len(data.labels), *data.images.shape[-2:])
    best, _ = spray.test_class(model, data, (predictions, maps), "a", record, examples, spray.AuditSettings(), runtime)
    candidate = AuditCandidate.from_dict({"rank": 1, **best})
    assert AuditCandidate.from_dict(candidate.to_dict()) == candidate
    return best, candidate


def effect_test(confirm, model, data, first: int = 0) -> tuple:
    """`confirm` (`spray.confirm_blur` or `spray.confirm_pattern`) of the 60 images from `first` as `model` predicts
    `data` on the CPU: (its (record, examples), or None where the group carries nothing to test; the predictions)."""
    runtime = Runtime(torch.device("cpu"))
    predictions = predict(model, data.images, runtime)
    members = torch.arange(first, first + 60)
    return confirm(model, data, predictions, members, spray.AuditSettings(), runtime), predictions


def effect_audit(record: dict, examples: dict, test: str, data, predictions) -> tuple:
    """(AuditResult, figure examples) of an audit whose one finding is `record` (an effect test's, with its
    `examples`) on `data`, class 0 named frog, settings as `spray` records them."""
    candidate = {"rank": 1, "class": "frog", "cluster": None, "n": len(examples["carriers"]), "test": test, **record}
    values = audit_json([candidate])
    values["settings"] |= spray.settings_record(spray.AuditSettings(), spray.AuditScale.of(data.images))
    values["dataset"]["classes"] = ["frog", *data.classes[1:]]  # class 0 is the audited one
    side = data.images.shape[-1]
    figure_examples = {"images": data.images, "maps": torch.zeros(len(data.images), side, side),
                       "predictions": predictions, "classes": {}, "candidates": [examples]}
    return AuditResult.from_dict(values), figure_examples
