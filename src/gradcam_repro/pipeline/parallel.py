"""`gradcam-repro run --parallel`: train the run's experiments side by side through the study's engine.

Each unfinished spec is one Ray task on a local Ray (one CPU, one torch thread), trained in a temporary
folder on the data put into the object store once; the driver writes each experiment folder atomically
(spec.json last, as `train_experiment` does) and the run goes on as usual, reusing them. On 2 cores two
1-thread trainings side by side have more throughput than one 2-thread training after the other (see
README, Studies); a model trained here is the same file as one trained by `run` with one torch thread.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from gradcam_repro.pipeline.experiment import TrainingSet, finished_record, train_experiment
from gradcam_repro.pipeline.run import Prepared
from gradcam_repro.pipeline.spec import ExperimentSpec
from gradcam_repro.pipeline.study import EXPERIMENT_FILES, ray_session, write_experiment_files
from gradcam_repro.runtime import Runtime

THREADS_PER_TRAINING = 1


def train_spec_files(training: TrainingSet, spec: ExperimentSpec, name: str, device: str) -> dict:
    """The Ray task: train `spec` with one torch thread in a temporary folder; returns {"files": {name: bytes},
    "log": [lines]}."""
    torch.set_num_threads(THREADS_PER_TRAINING)
    lines: list[str] = []
    training = replace(training, runtime=Runtime.choose(device, training.config.precision))
    with tempfile.TemporaryDirectory(prefix="gradcam-run-") as root:
        train_experiment(spec, training, Path(root), name, log=lines.append)
        folder = spec.folder(root)
        return {"files": {f: (folder / f).read_bytes() for f in EXPERIMENT_FILES}, "log": lines}


def train_side_by_side(p: Prepared, out: Path, log=print, force: bool = False) -> None:
    """Train every unfinished experiment of the run at once, one Ray task each, into `out/experiments/`."""
    import ray

    todo = {name: spec for name, spec in p.specs.items() if force or finished_record(spec.folder(out), spec) is None}
    if not todo:
        return
    device = "cpu" if p.runtime.device.type == "cpu" else str(p.runtime.device)
    with ray_session(None, log):
        log(f"training {', '.join(todo)} side by side on a local Ray ({THREADS_PER_TRAINING} thread each)")
        shared = ray.put(p.training)
        remote = ray.remote(train_spec_files).options(num_cpus=THREADS_PER_TRAINING,
                                                      num_gpus=0 if device == "cpu" else 1 / len(todo))
        refs = {name: remote.remote(shared, spec, name, device) for name, spec in todo.items()}
        for name, ref in refs.items():
            result = ray.get(ref)
            write_experiment_files(todo[name].folder(out), result["files"])
            for line in result["log"]:
                log(line)
