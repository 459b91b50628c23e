"""gradcam-repro: Grad-CAM on CIFAR-10, with and without a planted shortcut.

Pipeline, one module per stage:
data/shapes -> bias -> model -> train -> gradcam -> evaluate -> figures/report,
driven by experiment (and the CLI in cli).
"""

__version__ = "0.1.0"
