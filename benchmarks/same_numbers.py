"""`python -m benchmarks.same_numbers --ref REF`: proof that a restructuring moved no number.

Runs the same jobs with the code at git `REF` (extracted with `git archive`, imported first through
PYTHONPATH) and with the working tree, in one venv on one machine, then compares every value of the
results they wrote:

  1. `run --preset smoke --dataset shapes`   -> metrics.json
  2. `audit` of that run                     -> audit.json
  3. a 2-cell shapes smoke study             -> study.json and cells/*.json
  4. a 4-epoch shapes run whose biased model learns the patch, then a last-layer repair of it
                                             -> learnt/metrics.json (with the repaired model's column)

Wall times, peak memory, the environment record, Ray node ids and figure lists are not results and are
left out (`VOLATILE`); paths are compared relative to each side's folder; everything else must be equal (floats within `--tolerance`, default exact). The old
side's outputs under `--work` are reused, so they are made once; the working tree's are made anew. Exit 0 when every
value is equal, 1 otherwise; the differences are printed one per line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Keys whose values depend on the machine's load or on where the outputs were written, not on the science.
VOLATILE = {"seconds", "environment", "peak_rss_mb", "out", "figures", "final_line", "wall_s", "eta_s", "nodes",
            "node_ids", "written", "created", "data_root", "source", "path", "model_path", "run_dir",
            "train_seconds", "repair_seconds", "cell_seconds", "worker_seconds", "node_id"}
# (name, command, the file that marks it done). The first three are the issue's; the smoke model does not learn the
# patch, so a longer shapes run whose biased model does (and a last-layer repair of it) covers the CAM scores,
# verdicts and the repair path too.
JOBS = (
    ("run", ["run", "--preset", "smoke", "--dataset", "shapes", "--out", "{side}/run", "--quiet"], "run/metrics.json"),
    ("audit", ["audit", "{side}/run", "--out", "{side}/audit", "--quiet"], "audit/audit.json"),
    ("study", ["study", "--preset", "smoke", "--dataset", "shapes", "--seeds", "0", "--fractions", "0", "1",
               "--out", "{side}/study", "--quiet"], "study/study.json"),
    ("learnt", ["run", "--preset", "smoke", "--dataset", "shapes", "--epochs", "4", "--shapes-train", "3000",
                "--train-subset", "3000", "--out", "{side}/learnt", "--quiet"], "learnt/REPORT.md"),
    ("repair", ["repair", "{side}/learnt", "--strategy", "last-layer", "--per-class", "30", "--quiet"],
     "learnt/experiments/.repaired"),
)


def extract(ref: str, dest: Path) -> Path:
    """The package source at git `ref`, unpacked under `dest`; returns its src/ folder."""
    src = dest / "src"
    if not src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as tar:
            subprocess.run(["git", "-C", str(REPO), "archive", ref], stdout=tar, check=True)
            tar.seek(0)
            with tarfile.open(fileobj=tar) as archive:
                archive.extractall(dest, filter="data")
    return src


def run_jobs(side: Path, src: Path) -> None:
    """Run the jobs with the package at `src`, skipping those already done on this side."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    for name, args, done in JOBS:
        if (side / done).is_file():
            print(f"{side.name}: {name} already done")
            continue
        cmd = [sys.executable, "-m", "gradcam_repro", *(a.format(side=side) for a in args)]
        print(f"{side.name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, env=env, check=True, cwd=side.parent)
        if name == "repair":  # it rewrites the run's files: mark it done
            (side / done).touch()


def differences(old, new, path: str, tolerance: float) -> list[str]:
    """Every place where `new` differs from `old`, as 'path: old != new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{path}.{k}: only in the old output" for k in old.keys() - new.keys() if k not in VOLATILE]
        out += [f"{path}.{k}: only in the new output" for k in new.keys() - old.keys() if k not in VOLATILE]
        for key in old.keys() & new.keys():
            if key not in VOLATILE:
                out += differences(old[key], new[key], f"{path}.{key}", tolerance)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items != {len(new)} items"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]", tolerance)]
    if isinstance(old, float) and isinstance(new, float):
        same = (math.isnan(old) and math.isnan(new)) or math.isclose(old, new, rel_tol=tolerance, abs_tol=tolerance)
        return [] if same else [f"{path}: {old!r} != {new!r}"]
    return [] if old == new else [f"{path}: {old!r} != {new!r}"]


def result_files(side: Path) -> dict[str, Path]:
    files = {"metrics.json": side / "run" / "metrics.json", "audit.json": side / "audit" / "audit.json",
             "study.json": side / "study" / "study.json", "learnt/metrics.json": side / "learnt" / "metrics.json"}
    files |= {f"cells/{p.name}": p for p in sorted((side / "study" / "cells").glob("*.json"))}
    return files


def compare(old_side: Path, new_side: Path, tolerance: float) -> list[str]:
    old_files, new_files = result_files(old_side), result_files(new_side)
    found = [f"{name}: written by one side only" for name in sorted(old_files.keys() ^ new_files.keys())]
    for name in sorted(old_files.keys() & new_files.keys()):
        # Paths inside the results name the side's own folder: compare them relative to it.
        old = json.loads(old_files[name].read_text().replace(str(old_side), "<side>"))
        new = json.loads(new_files[name].read_text().replace(str(new_side), "<side>"))
        found += differences(old, new, name, tolerance)
        print(f"{name}: compared")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git commit or branch of the old code")
    parser.add_argument("--new-ref", help="git commit of the new code (default: the working tree); the same as --ref "
                                          "checks that the jobs are deterministic on this machine")
    parser.add_argument("--work", default="runs/same-numbers", help="folder for both sides' outputs")
    parser.add_argument("--tolerance", type=float, default=0.0, help="float tolerance (default 0: exactly equal)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    old_side, new_side = work / f"old-{args.ref}", work / f"new-{args.new_ref or 'tree'}"
    run_jobs(old_side, extract(args.ref, work / f"src-{args.ref}"))
    shutil.rmtree(new_side, ignore_errors=True)  # the new side is always made anew
    run_jobs(new_side, extract(args.new_ref, work / f"src-new-{args.new_ref}") if args.new_ref else REPO / "src")
    found = compare(old_side, new_side, args.tolerance)
    for line in found:
        print(line)
    print(f"same numbers: {'yes' if not found else 'no'} ({len(found)} difference(s)) between {args.ref} and "
          f"{args.new_ref or 'the working tree'}")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
