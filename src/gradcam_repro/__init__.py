"""gradcam-repro: Grad-CAM on CIFAR-10, with and without a planted shortcut.

The folders follow the pipeline, each stage a package:

    data/      datasets as uint8 tensors (cifar10, shapes), the registry, the planted patch (bias)
    model/     the CIFAR ResNet-18 (resnet) and its training loop (train)
    explain/   the CAM family (cam), Captum pixel methods (pixel), one protocol and registry (registry)
    measure/   scores with CIs (scores), predictions, the shortcut tests (shortcut), figure examples,
               the sanity check (sanity), deletion/insertion (faithfulness), method comparison (methods)
    report/    figures and markdown, pure functions of measured results
    pipeline/  experiment specs and folders (spec, experiment), the commands (run, compare,
               user_images), atomic files, readers and the run lock (store)

with `config` (one dataclass, presets), `runtime` (device, precision, seeds) and `cli` on top.
"""

__version__ = "0.2.0"
