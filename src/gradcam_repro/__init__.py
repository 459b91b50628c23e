"""gradcam-repro: Grad-CAM on CIFAR-10, with and without a planted shortcut.

The folders follow the pipeline, each stage a package that imports only from the stages above it:

    data/      images as uint8 tensors: `images` (ImageData, subsets), `cifar10`, `shapes`, `folder` (your own
               class folders at any size, brought to one --image-size), `registry` (the datasets a run can name),
               `artefact` (the one artefact type: paste, remove, decorrelate), `bias` (planting the shortcut on a
               share of one class), `zoo` (artefact kinds: square, logo, text, stripe, frame, tint, blur, noise;
               placement, opacity, JPEG)
    model/     `resnet` (the CIFAR ResNet-18 and its checkpoints), `arch` (the architectures `run --arch` trains:
               ImageNet-stem ResNet-18, VGG-11, ViT-Tiny), `train` (TrainSettings, the epoch loop),
               `finetune` (repair's training parts: RRR, last-layer refit), `sources` (models by --arch:
               torchvision, timm, entry points, and their input contract)
    explain/   `cam` (Grad-CAM and six relatives), `pixel` (Captum's pixel-space methods), `registry` (one
               explainer protocol and registry), `layers` (default layers per architecture, layer checks)
    measure/   `scores` (scores with bootstrap CIs), `predict`, `shortcut` (flip tests, energy in the patch),
               typed results (`results`: RunMetrics and its parts; `comparison_results`: MethodsResult, compare's
               methods.json; `audit_results`: AuditResult; `study_results`: StudyResult and its cells), `examples` (what the figures show), `sanity` (randomisation check),
               `faithfulness` (deletion/insertion), `comparison` (every method x layer), `detection` (the benchmark's
               detection, false-alarm and discovery rates), `spray` (the audit's SpRAy
               clustering and causal tests), `moving` (the audit's per-image tests of an artefact that moves),
               `shared` (the audit's test of the pixels a class's images share), `patterns` (its test of a faint
               pattern they share), `blurs` (its test of a region where they lack fine detail), `casts` (the
               audit's global colour-cast scan),
               `aggregate` (studies across seeds)
    report/    pure renderers of measured results: `format` (numbers), `figures`, `run_figures`, `markdown`,
               `html` (REPORT.html; its CSS and JS in report/assets/), `repair_table`, `audit_report`,
               `benchmark_report`,
               `study_report`
    pipeline/  the side effects: `spec` (content-hashed experiment specs), `folders` (every path, read and write
               of a run, study or audit folder), `prepare`, `experiment` (train or reuse one spec), `progress`
               (what a command prints), `engine` (Ray), `parallel`; the commands `run` (run, evaluate, report),
               `compare`, `explain_files`, `audit`, `repair`, `view`, `benchmark` (which explanations and audits
               catch which artefacts), and `study` with its `grid`, `study_tasks` and `eta`

with `errors` (the one-line UserError), `config` (one dataclass, presets), `options` (an options dataclass
as command-line flags), `runtime` (device, precision, seeds) and `store` (atomic files, readers, the run
lock) beneath every stage, and on top `cli` and `api` (the Python API: `gradcam_repro.explain(model, images)`,
`audit(model, dataset)`, `measure_shortcut(model, images, labels, artefact)`, `load_model(arch)`, ... for any nn.Module; imported on first use).
"""

import importlib

__version__ = "0.2.0"
API = ("audit", "load_model", "measure_shortcut", "repair", "with_contract", "Explanation", "Repaired")  # and `explain`, the callable explain/ package


def __getattr__(name: str):
    """The Python API's names, imported from `gradcam_repro.api` on first use (the CLI does not pay for them)."""
    if name in API:
        return getattr(importlib.import_module("gradcam_repro.api"), name)
    if name == "explain":
        return importlib.import_module("gradcam_repro.explain")
    raise AttributeError(f"module 'gradcam_repro' has no attribute {name!r}")
