"""Stage 3, explain: one explainer protocol and registry (`registry`) over the CAM family (`cam`: Grad-CAM
and six relatives) and Captum's pixel-space methods (`pixel`), and which layer to explain (`layers`).

The package is also the Python API's `gradcam_repro.explain(model, images, ...)`: calling it calls
`gradcam_repro.api.explain` (a module whose class defines `__call__`, so the name serves both).
"""

import importlib
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """gradcam_repro.explain(model, images, method="gradcam", layer=None, ...): see `gradcam_repro.api.explain`."""
        return importlib.import_module("gradcam_repro.api").explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
