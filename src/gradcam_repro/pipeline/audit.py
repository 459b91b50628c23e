"""`gradcam-repro audit`: find and causally confirm a shortcut in a trained model nobody described.

Reads a run folder (its "biased" experiment unless `--experiment` names another), an experiment folder or a
bare model.pt, and a dataset the project reads (the one the model was trained on, from spec.json, unless
`--dataset`/`--data-root` say otherwise); audits it with `measure.spray.audit_model`; writes, under the run
lock of the output folder (default `<run>/audit/`, or `audits/<model>/`):
    audit.json   every score, spectrum, region, rate with its 95% CI, verdict and setting
    AUDIT.md     the same for a person, with the figures
    figures/     audit_ranking.png, audit_prototypes.png, audit_candidate_<rank>_<class>.png
Everything is checked before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from gradcam_repro import store
from gradcam_repro.config import MAX_SEED, Config, valid_seed
from gradcam_repro.data.bias import patch_artefact, plant
from gradcam_repro.data.images import EvalSet, ImageData, stratified_subset
from gradcam_repro.data.registry import dataset_for
from gradcam_repro.errors import UserError
from gradcam_repro.explain.layers import chosen_layer
from gradcam_repro.explain.registry import PIXEL_METHODS, display_name, get_explainer
from gradcam_repro.measure import spray
from gradcam_repro.measure.audit_results import AuditResult
from gradcam_repro.measure.results import Interval
from gradcam_repro.measure.study_results import AuditSummary
from gradcam_repro.model.sources import ModelSource
from gradcam_repro.pipeline.experiment import RANDOM_WEIGHTS, load_models
from gradcam_repro.pipeline.folders import AuditFolder, ExperimentFolder, RunFolder, model_files
from gradcam_repro.pipeline.progress import as_reporter
from gradcam_repro.pipeline.spec import BiasSpec
from gradcam_repro.report import audit_report, figures
from gradcam_repro.runtime import Runtime


@dataclass(frozen=True)
class AuditOptions:
    """What `gradcam-repro audit` was asked for (one field per flag; None: the default described in --help)."""

    experiment: str | None = field(default=None, metadata={
        "help": "which experiment of a run folder to audit", "default_text": "biased"})
    dataset: str | None = field(default=None, metadata={
        "help": "dataset of the test images",
        "default_text": "the one the model was trained on, from spec.json; cifar10 for a bare model.pt"})
    data_root: str | None = None  # --data-root, shared with the other commands
    image_size: str | None = field(default=None, metadata={
        "metavar": "HxW", "help": "--dataset folder: the size the images are brought to (64x48: 64 rows, 48 columns)",
        "default_text": "the images' own size, if they all share one"})
    resize: str | None = field(default=None, metadata={
        "choices": ["resize", "centre-crop", "pad"], "help": "--dataset folder: how images of another size are fitted",
        "default_text": "centre-crop"})
    method: str = field(default=spray.AUDIT_METHOD, metadata={
        "help": "explanation method (README, Finding a shortcut, explains the default)"})
    layer: str | None = field(default=None, metadata={
        "help": "explained layer, a dotted path", "default_text": "by architecture: layer2 of this project's "
        "ResNet-18, a CNN's second-finest stage, a ViT's last norm1 that gets gradient (docs: Any model)"})
    out: str | None = field(default=None, metadata={
        "help": "output folder", "default_text": "<run>/audit, or audits/<model> for a model.pt"})
    device: str | None = None  # --device, shared with the other commands
    images: int | None = field(default=None, metadata={
        "help": "audit a class-balanced subset of this many test images", "default_text": "all"})
    classes: tuple[str, ...] | None = field(default=None, metadata={
        "metavar": "CLASS", "help": "audit only these classes", "default_text": "all"})
    candidates: int | None = field(default=spray.TOP_CANDIDATES, metadata={
        "default_text": "every class", "help": "test only this many top-ranked classes causally"})
    patch_test_fraction: float | None = field(default=None, metadata={
        "metavar": "F", "default_text": "the test set as it is",
        "help": "paste the run's patch (its size, colour, corner) on a seeded share F of --patch-test-class's test "
                "images, recorded in audit.json, to check the audit"})
    patch_test_class: str | None = field(default=None, metadata={
        "help": "class whose test images get the patch", "default_text": "the run's bias class"})
    seed: int = field(default=0, metadata={"help": "seed of the subsets, the pasted share, clustering and bootstrap"})
    colour_casts: bool = field(default=True, metadata={
        "help": "also measure which classes a faint global colour cast turns other images into (26 casts of 8 "
                "levels on 100 images, then the strongest 3 on 200 more; a measurement, no verdict)"})
    # The artefact --patch-test-fraction pastes, where it differs from the run's: (Config field, value) pairs
    # from the run's artefact flags (--artefact, --placement, --jpeg-quality, ...).
    pasted: tuple[tuple[str, object], ...] = field(default=(), metadata={"cli": False})
    # The model's architecture where it is not this project's (--arch, --num-classes, --arch-option).
    source: ModelSource | None = field(default=None, metadata={"cli": False})


@dataclass(frozen=True)
class AuditTarget:
    """The model to audit: its file, the config it was trained with (defaults for a bare model.pt), its
    experiment name, its spec.json record (None for a bare model.pt) and the default output folder."""

    model_path: Path
    config: Config
    name: str
    record: dict | None
    default_out: Path


def resolve_target(target: str | Path, experiment: str | None, source: ModelSource | None = None) -> AuditTarget:
    """A run folder (its `experiment`, default "biased"), an experiment folder or a model.pt file; with `source`
    (--arch), a state-dict checkpoint of that architecture."""
    target, run = Path(target), RunFolder(target)
    if source is not None:
        stem = source.arch.replace(":", "-") if str(target) == RANDOM_WEIGHTS else target.stem
        return AuditTarget(target, Config(), stem, None, Path("audits") / stem)
    if run.is_run():
        config, keys = run.read_manifest()
        name = experiment or ("biased" if "biased" in keys else next(iter(keys)))
        if name not in keys:
            raise UserError(f"run {target} has no experiment {name!r}; fix: pass --experiment as one of {', '.join(keys)}")
        path = run.experiment(keys[name]).model_pt
        if not path.is_file():
            raise UserError(f"experiment {name!r} of run {target} has no model.pt yet; fix: finish the run first "
                            f"(rerun `gradcam-repro run` with the same flags) or pass another --experiment")
        return AuditTarget(path, config, name, _record(path), run.audit.root)
    if experiment is not None:
        raise UserError(f"--experiment needs a run folder, and {target} is not one; fix: pass runs/<name> or drop --experiment")
    path = next(iter(model_files(target).values()))
    record = _record(path)
    config = Config.from_dict(record["config"]) if record and "config" in record else Config()
    stem = path.parent.name if path.stem == "model" else path.stem
    return AuditTarget(path, config, (record or {}).get("name", stem), record, Path("audits") / stem)


def _record(model_path: Path) -> dict | None:
    folder = ExperimentFolder(model_path.parent)
    return folder.read_record() if folder.spec_json.is_file() else None


def check_options(options: AuditOptions) -> None:
    """Refuse out-of-range flags before anything is loaded."""
    get_explainer(options.method)
    f = options.patch_test_fraction
    checks = [
        (f is None or 0.0 <= f <= 1.0, f"--patch-test-fraction must be in [0, 1], got {f}"),
        (options.patch_test_class is None or f is not None, "--patch-test-class needs --patch-test-fraction"),
        (not options.pasted or f is not None, "the artefact flags (--artefact, --placement, ...) need --patch-test-fraction; "
                                              "fix: add --patch-test-fraction F or drop them"),
        (options.candidates is None or options.candidates >= 1, f"--candidates must be >= 1, got {options.candidates}"),
        (options.images is None or options.images >= 10, f"--images must be >= 10, got {options.images}"),
        (valid_seed(options.seed), f"--seed must be in 0..{MAX_SEED}, got {options.seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def load_audit_set(config: Config, classes: tuple[str, ...], options: AuditOptions, log=print
                   ) -> tuple[EvalSet, dict]:
    """The audited test images (a class-balanced `--images` subset, `--patch-test-fraction` of one class
    patched) and the record of where they came from and what was pasted."""
    dataset = dataset_for(config)  # a folder dataset's classes come from its tree
    if len(dataset.classes) != len(classes):
        raise UserError(f"the model has {len(classes)} classes but dataset {dataset.name} has {len(dataset.classes)}; "
                        "fix: pass the --dataset the model was trained on")
    start = time.perf_counter()
    data = dataset.load(config)
    images, labels = data.test_images, data.test_labels
    log(f"data: {data.name} from {data.source} ({len(labels)} test images, {time.perf_counter() - start:.1f} s)")
    if options.images is not None:
        keep = stratified_subset(labels, options.images, options.seed)
        images, labels = images[keep], labels[keep]
    record = {"name": data.name, "source": data.source, "fingerprint": data.fingerprint, "n_test": len(labels),
              "classes": list(data.classes)}
    if options.patch_test_fraction is None:
        return EvalSet(images, labels, tuple(data.classes)), record
    name = options.patch_test_class or config.bias_class or dataset.default_bias_class
    patch = BiasSpec.from_config(config).patch
    artefact = patch_artefact(patch, tuple(images.shape[-2:]), name, "patch pasted on test images")
    target = data.class_index(name)
    images, patched, masks = plant(images, labels, target, options.patch_test_fraction, options.seed, artefact)
    box = artefact.box
    masks = masks if box is None else None  # where it went on each image where the place varies (to score the audit)
    record["patched_test"] = {"class": name, "fraction": options.patch_test_fraction, "patch": {**patch, "color": list(patch["color"])},
                              "box_tlbr_px": list(box) if box is not None else None,
                              "indices": patched.nonzero().squeeze(1).tolist()}
    return EvalSet(images, labels, tuple(data.classes), patched=patched, planted_box=box, planted_masks=masks), record


@dataclass
class PreparedAudit:
    """Everything an audit needs, checked and loaded before anything is written."""

    target: AuditTarget
    model: torch.nn.Module
    runtime: Runtime
    data: EvalSet
    data_record: dict
    out: Path
    layer: str


def prepare_audit(target: str | Path, options: AuditOptions, log=print) -> PreparedAudit:
    """Check the flags, load the model and the audited test set, check the output folder; writes nothing."""
    check_options(options)
    found = resolve_target(target, options.experiment, options.source)
    given = {"dataset": options.dataset, "data_root": options.data_root, "image_size": options.image_size,
             "resize": options.resize}
    config = replace(found.config, **{k: v for k, v in given.items() if v is not None}, **dict(options.pasted)).validate()
    runtime = Runtime.choose(options.device or "auto", config.precision)
    models, classes = load_models(found.model_path, runtime.device, options.source)
    model = next(iter(models.values()))
    out = Path(options.out) if options.out else found.default_out
    data, data_record = load_audit_set(config, classes, options, log)
    if len(data.labels) == 0:
        raise UserError(f"dataset {data_record['name']} from {data_record['source']} has no test images; "
                        "fix: pass a --data-root whose test split holds images")
    layer = _audit_layer(model, options, tuple(data.images.shape[-2:]))
    store.check_writable(out)  # last: a refused model, data or layer leaves no folder behind
    return PreparedAudit(found, model, runtime, data, data_record, out, layer)


def _audit_layer(model: torch.nn.Module, options: AuditOptions, size: tuple[int, int]) -> str:
    """--layer, checked, or the architecture's audit layer by `explain.layers.default_layers`' rule."""
    if options.method in PIXEL_METHODS:
        return options.layer or spray.AUDIT_LAYER
    return chosen_layer(model, options.layer, size, "audit", "--layer")


@dataclass(frozen=True)
class AuditDone:
    """What `audit` hands back: the result as audit.json holds it, the folder it was written to and the line
    the CLI prints last."""

    result: AuditResult
    out: Path
    final_line: str


def audit(target: str | Path, options: AuditOptions, log=print) -> AuditDone:
    """Audit the model at `target` and write audit.json, AUDIT.md and the figures."""
    wall = time.perf_counter()
    p = prepare_audit(target, options, log)
    settings = spray.AuditSettings(options.method, p.layer, options.seed, options.classes, options.candidates,
                                   colour_casts=options.colour_casts)
    where = "the input" if options.method in PIXEL_METHODS else p.layer
    log(f"auditing {p.target.name} ({p.target.model_path}) on {len(p.data.labels)} test images with {options.method} at {where}")
    with AuditFolder(p.out).lock():
        start = time.perf_counter()
        with as_reporter(log).tracker(f"[audit] {display_name(options.method)} maps", "img") as explaining:
            found, examples = spray.audit_model(p.model, p.data, settings, p.runtime, explaining)
        default = options.method == spray.AUDIT_METHOD and options.layer in (None, spray.AUDIT_LAYER)
        audit_s = time.perf_counter() - start
        result = AuditResult.from_dict({
            "target": str(target), "model": str(p.target.model_path), "experiment": p.target.name,
            "dataset": p.data_record, "default_method_layer": default, "precision": p.runtime.precision,
            "environment": store.environment_info(str(p.runtime.device)), **found,
            # end to end: all but writing the figures and files
            "seconds": {"audit": audit_s, "end_to_end": time.perf_counter() - wall}})
        result = write_audit(AuditFolder(p.out), result, examples)
    for line in audit_report.summary_lines(result)[:-1]:
        log(line)
    return AuditDone(result, p.out, audit_final_line(result, p.out, time.perf_counter() - wall))


def audit_final_line(result: AuditResult, out: Path, seconds: float) -> str:
    """E.g. "done in 212 s: confirmed shortcut: frog (region rows 0-5, cols 0-5, pasted on other classes -> frog
    99.9%); see audits/x/AUDIT.md". ASCII only."""
    confirmed = [c for c in result.candidates if c.verdict == spray.CONFIRMED]
    found = "; ".join(f"{c.class_name} ({audit_report.region_text(c)}, pasted on other classes -> "
                      f"{c.class_name} {100 * c.transplant_flip.mean:.1f}%)" for c in confirmed)
    verdict = f"confirmed shortcut: {found}" if confirmed else audit_report.overall_verdict(result)
    return f"done in {seconds:.0f} s: {verdict}; see {out / 'AUDIT.md'}"


def audit_summary(result: AuditResult, out: Path) -> dict:
    """The JSON summary of `audit` (--json) written to `out`: the verdicts with their numbers, the ranking and
    the paths."""
    out = Path(out)
    keep = ("rank", "class", "cluster", "n", "box_tlbr_px", "kind", "transplant_flip", "occluded_flip", "untouched",
            "removal_change", "verdict", "iou_with_planted_box")
    candidates = [c.to_dict() for c in result.candidates]
    return {"command": "audit", "out": str(out), "audit_json": str(out / "audit.json"), "audit_md": str(out / "AUDIT.md"),
            "experiment": result.experiment, "method": result.settings["method"], "layer": result.settings["layer"],
            "confirmed": list(result.confirmed), "candidates": [{k: c[k] for k in keep if k in c} for c in candidates],
            "ranking": [r.to_dict() for r in result.ranking], "seconds": dict(result.seconds)}


def write_audit(folder: AuditFolder, result: AuditResult, examples: dict) -> AuditResult:
    """The figures, then audit.json and AUDIT.md (each written atomically); returns the result with its figures."""
    saved = figures.save_figures(audit_report.audit_figures(result, examples), folder.root)
    result = replace(result, figures=tuple(saved))
    folder.write(result.to_dict(), audit_report.audit_markdown(result))
    return result


# The benchmark audits each cell's model with its artefact pasted on this share of the target class's test
# images (as `--patch-test-fraction 0.5` does): half carry it, so the audit must split the class to find it.
CELL_PATCH_TEST_FRACTION = 0.5
# Each transplant test of a benchmark cell's audit uses 200 other-class images: the 95% interval at a 50% rate is
# then about +-7 points, enough to tell the 50% bar from the controls, and the audit, which tests every class twice,
# costs a fifth of what the audit command's 1,000 would (the benchmark audits every cell: 84 s per cell with 300).
CELL_TRANSPLANT_IMAGES = 200


def audit_cell(model: torch.nn.Module, config: Config, data: ImageData, runtime: Runtime,
               transplant_images: int = CELL_TRANSPLANT_IMAGES) -> tuple[AuditSummary, dict]:
    """The benchmark's audit of one cell's model (default explainer and layer, the cell's seed) on its test
    images, the cell's artefact pasted on a seeded CELL_PATCH_TEST_FRACTION of the target class's: its summary,
    and the whole JSON-ready result as `spray.audit_model` returns it (every class's clusters and scores, every
    tested candidate, the unexplained classes with their ratios), which the benchmark keeps beside the cell."""
    start = time.perf_counter()
    target = data.class_index(config.bias_class)
    artefact = patch_artefact(BiasSpec.from_config(config).patch, tuple(data.test_images.shape[-2:]), config.bias_class)
    images, patched, masks = plant(data.test_images, data.test_labels, target, CELL_PATCH_TEST_FRACTION, config.seed,
                                   artefact)
    test = EvalSet(images, data.test_labels, tuple(data.classes), patched=patched, planted_box=artefact.box,
                   planted_masks=masks if artefact.box is None else None)
    # No colour-cast scan: the benchmark does not score it, and it would add a fifth to every cell's audit.
    settings = spray.AuditSettings(seed=config.seed, transplant_images=transplant_images, colour_casts=False)
    found, _ = spray.audit_model(model, test, settings, runtime)
    mine = next((c for c in found["candidates"] if c["class"] == config.bias_class), None)
    return AuditSummary(
        config.bias_class, tuple(found["confirmed"]), mine["verdict"] if mine else "not tested",
        mine["test"] if mine else None, mine.get("iou_with_planted_box") if mine else None,
        Interval.from_dict(mine["transplant_flip"]) if mine else None,
        tuple(u["class"] for u in found["unexplained"]), time.perf_counter() - start, spray.RULES_VERSION), found
