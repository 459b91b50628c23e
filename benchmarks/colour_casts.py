"""`python -m benchmarks.colour_casts BENCH_OUT`: the audit's colour-cast scan (`measure.casts`) on every model of a
finished `gradcam-repro benchmark` folder, one line per model, as docs/zoo.md reports it.

Each model is scanned on the same stratified test images (`--images`, seed 0, as `audit --images N`), nothing
pasted: the strongest class per model, its cast and its rate re-measured on fresh images, and the scan's seconds.
`--levels` sets the cast's size (the audit uses `measure.casts.CAST_LEVELS`), `--kinds` the recipes whose models
are scanned (their cells' clean controls come along once each).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gradcam_repro.config import Config
from gradcam_repro.data.images import stratified_subset
from gradcam_repro.data.registry import dataset_for
from gradcam_repro.measure import casts
from gradcam_repro.measure.predict import predict
from gradcam_repro.pipeline.experiment import load_models
from gradcam_repro.runtime import Runtime


def cast_line(rows: list[dict], levels: int) -> str:
    """"frog (8, -8, 8) 46.7% [39.7, 53.8] (scan 43%); ..." for the scan's rows."""
    def one(r: dict) -> str:
        rgb = tuple(d * levels for d in r["direction"])
        f = r["flip"]
        return (f"{r['class']} {rgb} {100 * f['mean']:.1f}% [{100 * f['low']:.1f}, {100 * f['high']:.1f}] "
                f"(scan {100 * r['scan_flip']:.0f}%)")
    return "; ".join(one(r) for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_out", type=Path, help="a finished benchmark's --out folder")
    parser.add_argument("--levels", type=int, default=casts.CAST_LEVELS)
    parser.add_argument("--kinds", nargs="+", default=None, help="recipes to scan (default: every one)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seen, images, classes = set(), None, ()
    for path in sorted((args.bench_out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        axes, key = cell["axes"], cell["spec_key"]
        if (args.kinds and axes["kind"] not in args.kinds) or key in seen:
            continue
        seen.add(key)
        config = Config.from_dict(cell["config"])
        runtime = Runtime.choose("cpu", config.precision)
        if images is None:
            data = dataset_for(config).load(config)
            keep = stratified_subset(data.test_labels, args.images, 0)
            images, classes = data.test_images[keep], tuple(data.classes)
        model = next(iter(load_models(args.bench_out / "experiments" / key / "model.pt", runtime.device)[0].values()))
        start = time.perf_counter()
        rows = casts.scan_casts(model, images, predict(model, images, runtime), classes, runtime, 0, args.levels)
        name = "control" if axes["bias_fraction"] == 0 else f"{axes['kind']} {axes['bias_fraction']}"
        print(f"{name:18s} s{axes['seed']} {key}: {cast_line(rows, args.levels)}  {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
