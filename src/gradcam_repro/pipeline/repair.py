"""`gradcam-repro repair RUN --strategy {augment,rrr,last-layer}`: remove a shortcut, then measure the repaired
model exactly as the run's baseline and biased models are measured.

The artefact comes from the run's planted patch (default), an audit's confirmed candidate (`--from-audit`)
or a user's box (`--box`). The repaired model is one more experiment spec (the biased spec plus a
`RepairSpec`) in `<run>/experiments/<key>/`, named `repaired-<strategy>[-audit|-box]` in run.json; the run is
then re-measured, so metrics.json, the figures and the reports gain its column. Every strategy uses only
what a user has: the biased training set and the artefact (never the clean images the patch was pasted on).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from gradcam_repro.data import artefact as artefacts
from gradcam_repro.data.artefact import Artefact
from gradcam_repro.data.bias import patch_artefact
from gradcam_repro.data.images import stratified_subset
from gradcam_repro.errors import UserError
from gradcam_repro.measure.audit_results import AuditResult
from gradcam_repro.measure.predict import accuracy, predict_logits
from gradcam_repro.measure.results import RunMetrics
from gradcam_repro.measure.spray import CONFIRMED
from gradcam_repro.model import finetune
from gradcam_repro.pipeline.experiment import (
    Experiment,
    experiment_ids,
    experiment_record,
    load_experiment,
    save_experiment,
    train_experiment,
    training_images,
)
from gradcam_repro.pipeline.folders import AuditFolder, RunFolder
from gradcam_repro.pipeline.prepare import Prepared
from gradcam_repro.pipeline.progress import as_reporter, epoch_progress
from gradcam_repro.pipeline.run import load_run, measure_run, write_results
from gradcam_repro.pipeline.spec import ExperimentSpec, RepairSpec
from gradcam_repro.runtime import Runtime


@dataclass(frozen=True)
class RepairOptions:
    """What `gradcam-repro repair` was asked for (one field per flag; see --help for the defaults' reasons)."""

    strategy: str = field(metadata={"metavar": "STRATEGY"})  # a name in STRATEGIES; --help lists them
    from_audit: str | None = field(default=None, metadata={  # an audit folder or audit.json; "" = <run>/audit
        "nargs": "?", "const": "", "metavar": "AUDIT",
        "help": "take the artefact from an audit's top confirmed candidate (AUDIT left out: RUN_DIR/audit)"})
    box: tuple[int, int, int, int] | None = field(default=None, metadata={  # parsed by parse_box (a UserError)
        "type": str, "help": "the artefact is what the bias class's training images hold in this box: "
                             "top,left,bottom,right in px (bottom/right exclusive)"})
    share: float = field(default=0.5, metadata={
        "help": "augment: share of each class's training images given the artefact"})
    rrr_weight: float = field(default=1.0, metadata={"help": "rrr: weight of the input-gradient penalty"})
    repair_epochs: int = field(default=1, metadata={"help": "rrr: fine-tuning epochs"})
    repair_lr: float = field(default=0.01, metadata={"help": "rrr: constant SGD learning rate"})
    repair_images: int | None = field(default=None, metadata={
        "help": "rrr: fine-tune on a class-balanced subset of this many training images",
        "default_text": "all the biased model saw"})
    per_class: int = field(default=250, metadata={
        "help": "last-layer: training images per class, each with and without the artefact"})
    device: str | None = None  # --device, shared with the other commands
    data_root: str | None = None  # --data-root, shared with the other commands
    force: bool = field(default=False, metadata={"help": "redo the repair even if the same one is saved in the run"})

    def params(self) -> tuple[tuple[str, object], ...]:
        """The settings that determine the repaired weights (part of its spec key)."""
        return tuple((name, getattr(self, name)) for name in STRATEGIES[self.strategy].params)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'top,left,bottom,right' -> a tuple of 4 ints (its range is checked against the image later)."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box {text!r} is not 4 integers; fix: pass --box top,left,bottom,right in px, e.g. 0,0,6,6")
    return box


def check_options(options: RepairOptions) -> None:
    if options.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {options.strategy!r}; fix: pass --strategy as one of {', '.join(STRATEGIES)}")
    if options.from_audit is not None and options.box is not None:
        raise UserError("--from-audit and --box both name the artefact; fix: pass one of them")
    checks = [(0.0 < options.share < 1.0, f"--share must be strictly between 0 and 1, got {options.share}"),
              (options.rrr_weight >= 0, f"--rrr-weight must be >= 0, got {options.rrr_weight}"),
              (options.repair_epochs >= 1, f"--repair-epochs must be >= 1, got {options.repair_epochs}"),
              (options.repair_lr > 0, f"--repair-lr must be > 0, got {options.repair_lr}"),
              (options.per_class >= 2, f"--per-class must be >= 2, got {options.per_class}"),
              (options.repair_images is None or options.repair_images >= 10,
               f"--repair-images must be >= 10, got {options.repair_images}")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def check_run(run_dir: Path) -> None:
    """Refuse a folder that is not a run with a biased model, before any data is loaded."""
    _, keys = RunFolder(run_dir).read_manifest()
    if "biased" not in keys:
        raise UserError(f"run {run_dir} has no biased model to repair (it has {', '.join(keys) or 'none'}); "
                        "fix: pass a folder written by `gradcam-repro run` with --bias-fraction above 0")


def artefact_from_audit(path: Path) -> Artefact:
    """The top-ranked confirmed candidate of an audit (a folder holding audit.json, or the file itself)."""
    file = path / "audit.json" if path.is_dir() else path
    fix = "fix: run `gradcam-repro audit` first, or pass --box or no artefact flag"
    audit = AuditResult.from_dict(AuditFolder.read(path, fix=fix), str(file))
    confirmed = [c for c in audit.candidates if c.verdict == CONFIRMED]
    if not confirmed:
        raise UserError(f"audit {file} confirmed no shortcut, so there is no artefact to remove; "
                        "fix: pass --box top,left,bottom,right or repair with the run's own patch (no --from-audit)")
    best = confirmed[0]
    if best.per_image:
        raise UserError(f"audit {file} confirmed {best.class_name} by its per-image test (an artefact that moves), and "
                        "repair removes an artefact at one fixed place only; fix: repair with the run's own artefact "
                        "(no --from-audit), or pass --box top,left,bottom,right")
    if best.pattern:
        raise UserError(f"audit {file} confirmed {best.class_name} by its shared-pattern test (a faint pattern added to the "
                        "whole image), and repair removes an artefact drawn at one place only; fix: repair with the run's "
                        "own artefact (no --from-audit), or pass --box top,left,bottom,right")
    if best.blurred:
        raise UserError(f"audit {file} confirmed {best.class_name} by its shared-blur test (a region blurred, no pixels "
                        "to paste), and repair removes an artefact drawn at one place only; fix: repair with the run's "
                        "own artefact (no --from-audit), or pass --box top,left,bottom,right")
    box = best.box_tlbr_px
    source = f"audit {file} (rank {best.rank}, {best.class_name}, {best.kind})"
    if best.pixels is not None:
        keep = None if best.constant_mask is None else artefacts.rows_mask(best.constant_mask)
        return Artefact(box, torch.tensor(best.pixels, dtype=torch.uint8), best.class_name, source, keep=keep)
    if best.kind == "constant pixels":  # audits written before the pixels were recorded: constant = mean
        color = tuple(round(v) for v in best.mean_rgb)
        return artefacts.solid(box, color, best.class_name, source + ", mean colour")
    raise UserError(f"audit {file} does not record the candidate's pixels; fix: rerun `gradcam-repro audit`")


def resolve_artefact(run_dir: Path, p: Prepared, biased: Experiment, options: RepairOptions) -> Artefact:
    """The artefact to remove: --from-audit's, --box's (pixels: the class's training-image median there) or
    the run's planted patch."""
    if options.from_audit is not None:
        return artefact_from_audit(Path(options.from_audit) if options.from_audit else RunFolder(run_dir).audit.root)
    cfg = p.config
    if options.box is not None:
        images, labels, _ = training_images(biased.spec, p.training)
        target = p.data.class_index(cfg.bias_class)
        return artefacts.from_images(options.box, images[labels == target], cfg.bias_class, "box given with --box")
    bias = biased.spec.bias
    artefact = patch_artefact(bias.patch, tuple(p.data.test_images.shape[-2:]), bias.class_name, "the run's planted patch")
    if not isinstance(artefact, Artefact):
        raise UserError(f"the run's artefact is a {bias.kind} at {bias.corner} places, and repair pastes and removes "
                        "the seed's kind only (a solid square at a corner) for now; fix: pass --box top,left,bottom,right "
                        "for a fixed-place artefact, or repair a square-patch run")
    return artefact


def repaired_name(options: RepairOptions) -> str:
    suffix = "-audit" if options.from_audit is not None else "-box" if options.box is not None else ""
    return f"repaired-{options.strategy}{suffix}"


def repair_spec(biased: ExperimentSpec, artefact: Artefact, options: RepairOptions) -> ExperimentSpec:
    """The biased spec plus the repair: same data, bias, training and seed, so only the repair differs."""
    return replace(biased, repair=RepairSpec(options.strategy, biased.key, artefact.to_dict(), options.params()))


def balanced_set(images: torch.Tensor, labels: torch.Tensor, artefact: Artefact, per_class: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` seeded training images of every class, each twice: artefact removed and artefact pasted.
    Balanced over class x artefact present/absent whatever the images carried before."""
    n_classes = int(labels.max()) + 1
    pick = stratified_subset(labels, min(per_class * n_classes, len(labels)), seed)
    chosen = images[pick]
    return (torch.cat([artefacts.remove(chosen, artefact), artefacts.paste(chosen, artefact)]),
            torch.cat([labels[pick], labels[pick]]))


def refit_on_balanced(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, artefact: Artefact,
                      per_class: int, seed: int, runtime: Runtime) -> dict:
    """DFR on any model: refit its classifier (`finetune.classifier_of`) in place on the penultimate features of
    `balanced_set` drawn from (N, 3, H, W) uint8 `images`; returns the fit's record."""
    x, y = balanced_set(images, labels, artefact, per_class, seed)
    features = finetune.penultimate_features(model, x, runtime.device, runtime.amp_dtype)
    return {"balanced_images": len(y), **finetune.refit_last_layer(finetune.classifier_of(model), features, y)}


def fit_last_layer(model: torch.nn.Module, p: Prepared, biased: Experiment, artefact: Artefact,
                   options: RepairOptions, log=print) -> tuple[list[dict], dict]:
    """DFR: `refit_on_balanced` on the biased model's training images; returns (no epochs, the fit's record)."""
    images, labels, _ = training_images(biased.spec, p.training)
    return [], refit_on_balanced(model, images, labels, artefact, options.per_class, biased.spec.seed, p.runtime)


def finetune_rrr(model: torch.nn.Module, p: Prepared, biased: Experiment, artefact: Artefact,
                 options: RepairOptions, log=print) -> tuple[list[dict], dict]:
    """Right for the Right Reasons fine-tuning of `model` on the biased training set; returns (its epochs, {})."""
    images, labels, _ = training_images(biased.spec, p.training)
    if options.repair_images is not None:
        keep = stratified_subset(labels, min(options.repair_images, len(labels)), biased.spec.seed)
        images, labels = images[keep], labels[keep]
    settings = finetune.FinetuneSettings(options.repair_epochs, options.repair_lr, p.config.batch_size, options.rrr_weight,
                                        p.config.weight_decay, p.config.label_smoothing, biased.spec.seed)
    def epoch_line(record: dict) -> None:
        log(f"[rrr] epoch {record['epoch']}/{settings.epochs}  loss {record['loss']:.4f}  penalty {record['penalty']:.4f}  "
            f"train acc {record['train_acc']:.3f}  {record['seconds']:.1f} s")

    history = finetune.rrr_finetune(model, images, labels, artefact.mask(), settings, p.runtime,
                                   epoch_progress(log, "[rrr]", settings.epochs), epoch_line)
    ts = p.training  # the history's columns as training writes them; the test accuracy after the last epoch
    test_acc = accuracy(predict_logits(model, ts.data.test_images[ts.eval_index], p.runtime), ts.data.test_labels[ts.eval_index])
    for record in history:
        record.update(test_acc=test_acc if record is history[-1] else float("nan"), train_px=images.shape[-1],
                      train_seconds=record["seconds"])
    log(f"[rrr] clean test acc after {settings.epochs} epoch(s): {test_acc:.3f}")
    return history, {}


# A strategy's fit(model, prepared, biased experiment, artefact, options, log) -> (history, fit record) changes
# `model` (a fresh copy of the biased model) in place.
Fit = Callable[..., tuple[list[dict], dict]]


@dataclass(frozen=True)
class Strategy:
    """One way to repair: the options that determine its weights (part of the repaired spec's key), how it fits
    (None: the model is retrained from scratch on images where the artefact says nothing about the class), and
    what it does, in the words `--help` shows."""

    name: str
    params: tuple[str, ...]
    fit: Fit | None
    help: str


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("augment", ("share",), None, "retrain with the artefact pasted on a share of every class's images (the "
             "rest get it filled in)"),
    Strategy("rrr", ("rrr_weight", "repair_epochs", "repair_lr", "repair_images"), finetune_rrr,
             "fine-tune the biased model with an input-gradient penalty inside the artefact's box (double backprop)"),
    Strategy("last-layer", ("per_class",), fit_last_layer, "refit only fc on a class x artefact balanced set (seconds)"),
)}


def build_repaired(spec: ExperimentSpec, p: Prepared, biased: Experiment, artefact: Artefact, options: RepairOptions,
                   log=print) -> Experiment:
    """Train (augment) or fit (rrr, last-layer) the repaired model into its folder, or reuse it there."""
    run, name, strategy = RunFolder(p.config.out_dir), repaired_name(options), STRATEGIES[options.strategy]
    folder = run.experiment(spec.key)
    if strategy.fit is None:
        return train_experiment(spec, p.training, folder, name, log, options.force)
    if not options.force and folder.finished_record(spec.key) is not None:
        log(f"[{name}] reusing the finished repair {spec.key} in {folder.path} (same spec; --force redoes it)")
        return load_experiment(folder, len(p.data.classes), p.runtime)
    model = load_experiment(run.experiment(biased.spec.key), len(p.data.classes), p.runtime).model  # a fresh copy
    log(f"[{name}] {options.strategy} on the biased model {biased.spec.key} against {artefact.source}")
    start = time.perf_counter()
    history, fit = strategy.fit(model, p, biased, artefact, options, log)
    seconds = time.perf_counter() - start
    return save_repaired(spec, p, model, name, {"history": history, "fit": fit, "repair_seconds": seconds})


def save_repaired(spec: ExperimentSpec, p: Prepared, model: torch.nn.Module, name: str, extra: dict) -> Experiment:
    """Save the repaired model's folder as a trained experiment's (`save_experiment`)."""
    history = extra.pop("history")
    record = experiment_record(spec, p.training, name, extra)
    record = save_experiment(RunFolder(p.config.out_dir).experiment(spec.key), model, history, record)
    return Experiment(spec, model.eval(), history, record)


def repair(run_dir: str | Path, options: RepairOptions, log=print) -> RunMetrics:
    """Repair the run's biased model, add it to run.json, re-measure the run; returns metrics.json's content."""
    wall, run_dir = time.perf_counter(), Path(run_dir)
    check_options(options)
    check_run(run_dir)
    p, experiments = load_run(run_dir, log, device=options.device, data_root=options.data_root)
    biased = experiments["biased"]
    artefact = resolve_artefact(run_dir, p, biased, options)
    spec, name = repair_spec(biased.spec, artefact, options), repaired_name(options)
    run = RunFolder(run_dir)
    with run.lock():
        experiments[name] = build_repaired(spec, p, biased, artefact, options, log)
        run.add_experiment(name, spec.key)
        metrics = measured_already(run, p, experiments)
        if metrics is not None:
            log(f"[{name}] {run.metrics_json} already measures these models with this config: not measured again")
        else:
            metrics, examples = measure_run(p, experiments, log)
            metrics = write_results(run, metrics.timed(end_to_end=time.perf_counter() - wall), examples)
    as_reporter(log).final(f"[{name}] done in {time.perf_counter() - wall:.0f} s (repair {metrics.repairs[name].seconds:.0f} "
                           f"s): {repair_line(metrics, name)}; {run.report_html}")
    return metrics


def measured_already(run: RunFolder, p: Prepared, experiments: dict[str, Experiment]) -> RunMetrics | None:
    """The run's metrics.json where it measured exactly these models (keys and model hashes) with this config, as
    after a rerun of a finished repair; else None."""
    if not run.metrics_json.is_file():
        return None
    try:
        metrics = run.read_metrics()
    except UserError:
        return None
    same_config = json.loads(json.dumps(p.config.to_dict())) == json.loads(json.dumps(metrics.config))
    return metrics if same_config and metrics.experiments == experiment_ids(experiments) else None


def repair_line(metrics: RunMetrics, name: str) -> str:
    """One repaired model's headline numbers next to the baseline's and the biased model's."""
    cls = metrics.config["bias_class"]
    models = [metrics.models[n] for n in ("baseline", "biased", name) if n in metrics.models]
    parts = [f"{label} " + " / ".join(f"{getattr(m, key).mean:.3f}" for m in models)
             for label, key in (("clean acc", "clean_test_acc"), (f"{cls} recall", "target_recall_clean"))]
    flips = " / ".join(f"{m.flip_to_target['patch'].mean:.3f}" for m in models)
    return f"{', '.join(parts)}, flip-to-{cls} {flips} (baseline / biased / repaired)"
