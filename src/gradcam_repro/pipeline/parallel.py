"""`gradcam-repro run --parallel`: train the run's experiments side by side on the Ray engine (`pipeline.engine`).

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

from gradcam_repro.pipeline.engine import TaskBatch, TaskResources, ray_session, share
from gradcam_repro.pipeline.experiment import TrainingSet, train_experiment
from gradcam_repro.pipeline.folders import ExperimentFolder, RunFolder
from gradcam_repro.pipeline.prepare import Prepared
from gradcam_repro.pipeline.spec import ExperimentSpec
from gradcam_repro.runtime import Runtime

THREADS_PER_TRAINING = 1


def train_spec_files(training: TrainingSet, spec: ExperimentSpec, name: str, device: str) -> dict:
    """The Ray task (on THREADS_PER_TRAINING torch threads, set by the engine): train `spec` in a temporary
    folder; returns {"files": {name: bytes}, "log": [lines]}."""
    lines: list[str] = []
    training = replace(training, runtime=Runtime.choose(device, training.config.precision))
    with tempfile.TemporaryDirectory(prefix="gradcam-run-") as root:
        folder = ExperimentFolder(Path(root) / spec.key)
        train_experiment(spec, training, folder, name, log=lines.append)
        return {"files": folder.read_files(), "log": lines}


def train_side_by_side(p: Prepared, run: RunFolder, log=print, force: bool = False) -> None:
    """Train every unfinished experiment of the run at once, one Ray task each, into the run's folder."""
    todo = {name: spec for name, spec in p.specs.items()
            if force or run.experiment(spec.key).finished_record(spec.key) is None}
    if not todo:
        return
    device = "cpu" if p.runtime.device.type == "cpu" else str(p.runtime.device)
    resources = TaskResources(cpus=THREADS_PER_TRAINING, gpus=0 if device == "cpu" else 1 / len(todo),
                              threads=THREADS_PER_TRAINING)
    with ray_session(None, log):
        log(f"training {', '.join(todo)} side by side on a local Ray ({THREADS_PER_TRAINING} thread each)")
        shared = share(p.training)
        batch = TaskBatch(train_spec_files, resources, [(name, (shared, spec, name, device)) for name, spec in todo.items()])
        for name, result in batch.in_order():
            run.experiment(todo[name].key).write_files(result["files"])
            for line in result["log"]:
                log(line)
