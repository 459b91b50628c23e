"""`python -m benchmarks.cell_cost BENCH_OUT`: where one finished benchmark cell's measuring time goes, and what
explaining the methods together (`measure.shortcut.methods_metrics`: the gradient CAMs share one forward/backward
pass) saves against explaining each method alone, both timed in this one run on the same model and images.

The cell is picked by `--kind`, `--seed` and `--dose` (0: the clean control, measured with the kind's artefact) from
a `gradcam-repro benchmark` folder whose model is trained (it is loaded, not trained again). Each path is timed
`--repeats` times, best kept; the two must give the same scores, or the script fails.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from gradcam_repro.config import Config
from gradcam_repro.data.images import EvalSet
from gradcam_repro.data.registry import dataset_for
from gradcam_repro.measure import shortcut
from gradcam_repro.pipeline.audit import audit_cell
from gradcam_repro.pipeline.experiment import load_models
from gradcam_repro.pipeline.folders import BenchmarkFolder
from gradcam_repro.pipeline.prepare import prepared_from_data
from gradcam_repro.pipeline.run import shortcut_protocol
from gradcam_repro.runtime import Runtime
from gradcam_repro.store import environment_info


def best_of(repeats: int, fn):
    """(fewest seconds over `repeats` calls of fn, its last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def find_cell(bench_out: Path, kind: str, seed: int, dose: float) -> dict:
    for path in sorted((bench_out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        axes = cell["axes"]
        if (axes["kind"], axes["seed"], axes["bias_fraction"]) == (kind, seed, dose):
            return cell
    raise SystemExit(f"no finished cell {kind}, seed {seed}, dose {dose} in {bench_out}/cells; "
                     "fix: pass a benchmark folder that holds it")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_out", type=Path, help="a benchmark's --out folder holding the cell's trained model")
    parser.add_argument("--kind", default="square")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dose", type=float, default=1.0, help="the cell's bias fraction; 0 for the clean control")
    parser.add_argument("--methods", nargs="+", default=None, help="default: the cell's own")
    parser.add_argument("--threads", type=int, default=1, help="1: as a benchmark worker runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-audit", action="store_true", help="time the measuring only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cell = find_cell(args.bench_out, args.kind, args.seed, args.dose)
    config = Config.from_dict(cell["config"])
    methods = tuple(args.methods or cell["methods"])
    runtime = Runtime.choose("cpu", config.precision)
    prepared = prepared_from_data(config, dataset_for(config).load(config), runtime)
    model_pt = BenchmarkFolder(args.bench_out).experiment(cell["spec_key"]).model_pt
    model = next(iter(load_models(model_pt, runtime.device)[0].values()))
    data = prepared.data
    test = EvalSet(data.test_images, data.test_labels, data.classes, data.test_masks)
    protocol = shortcut_protocol(prepared)
    probes = shortcut.make_probes(test, protocol)

    t_pred, (metrics, preds) = best_of(args.repeats, lambda: shortcut.prediction_metrics(model, test, probes, protocol, runtime))
    t_alone, alone = best_of(args.repeats, lambda: {
        m: shortcut.explanation_metrics(model, test, probes, preds, replace(protocol, method=m), runtime)[0] for m in methods})
    t_shared, shared = best_of(args.repeats, lambda: {
        m: out[0] for m, out in shortcut.methods_metrics(methods, model, test, probes, preds, protocol, runtime).items()})
    if shared != alone:
        raise SystemExit("the shared explanation passes gave other scores than one pass per method")
    rows = [("predictions (flip tests, accuracies)", t_pred), (f"explanations, one pass per method ({len(methods)})", t_alone),
            ("explanations, gradient CAMs sharing a pass", t_shared)]
    if not args.no_audit:
        t_audit, _ = best_of(1, lambda: audit_cell(model, config, data, runtime))
        rows.append(("audit", t_audit))
    env = environment_info()
    print(f"cell {args.kind}, seed {args.seed}, dose {args.dose}: methods {', '.join(methods)}; {args.threads} thread(s), "
          f"{runtime.amp_dtype or 'fp32'}; {env['processor']}; torch {env['torch']}")
    for name, seconds in rows:
        print(f"  {name:<48} {seconds:7.1f} s")
    before, after = t_pred + t_alone, t_pred + t_shared
    print(f"measuring: {before:.1f} s -> {after:.1f} s ({after / before:.2f}x the time); explanations alone "
          f"{t_shared / t_alone:.2f}x; same scores for every method")


if __name__ == "__main__":
    main()
