#!/usr/bin/env bash
# The GPU evidence, run on a lent device machine (its python3 holds torch; no network, no venv) in the repo's root:
#   bash benchmarks/gpu_evidence.sh STEP...
# Steps, in the order they are worth their device time:
#   tree   the CIFAR-10 parts under .gpu-data/ (`python -m benchmarks.gpu_evidence pack` here, one part per call)
#          as a PNG tree with the same pixels (.gpu-data/tree), so experiment keys match the CPU runs'
#   full   `run --preset full` on the GPU: the well-trained pair (issue 22), with its wall times
#   paper  `run --preset paper` on the GPU
#   bench  `python -m benchmarks.bench` (sections 1-2 on the CPU and the GPU)
#   study  the 5-seed quick study with --gpus-per-cell 0.5 (needs ray, carried as wheels: see the device README)
#   grid   `gradcam-repro benchmark`, the default shortcut grid (57 models, 81 audited cells), four cells per GPU
#          (--gpus-per-cell 0.25; needs ray); resumes where a call's limit cut it off
# Each step's log, REPORT.md and metrics.json land in $OUT (the device tool brings them back); runs stay under
# runs/gpu-* (ignored by git, kept on a warm machine between calls), so a step cut off at the call's limit resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-evidence}
mkdir -p "$OUT"
TREE=.gpu-data/tree
PY=${PY:-python3}

run_preset() {  # preset name
    "$PY" -m gradcam_repro run --preset "$1" --device cuda --data-root "$TREE" --out "runs/gpu-$1" 2>&1 \
        | tee -a "$OUT/$1.log"
    cp "runs/gpu-$1/REPORT.md" "$OUT/$1-REPORT.md"
    cp "runs/gpu-$1/metrics.json" "$OUT/$1-metrics.json"
}

{ nvidia-smi -L; "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } \
    > "$OUT/device.txt" 2>&1 || true  # what the card is, for the record; the steps below fail on their own
for step in "$@"; do
    start=$(date +%s)
    case "$step" in
        tree) [ -f "$TREE/.done" ] || { "$PY" -m benchmarks.gpu_evidence unpack --tree "$TREE" && touch "$TREE/.done"; } ;;
        full|paper) run_preset "$step" ;;
        bench) paper=(); [ -f runs/gpu-paper/metrics.json ] && paper=(--paper-run runs/gpu-paper)
               "$PY" -m benchmarks.bench --data-root "$TREE" "${paper[@]}" --out "$OUT/BENCHMARKS-gpu.md" 2>&1 \
                   | tee -a "$OUT/bench.log" ;;
        study) "$PY" -m gradcam_repro study --preset quick --data-root "$TREE" --seeds 0 1 2 3 4 --fractions 0 1 \
                   --gpus-per-cell 0.5 --device cuda --out runs/gpu-study-quick 2>&1 | tee -a "$OUT/study.log"
               cp runs/gpu-study-quick/STUDY.md "$OUT/STUDY.md" ;;
        grid) "$PY" -m gradcam_repro benchmark --data-root "$TREE" --gpus-per-cell 0.25 --device cuda \
                  --out runs/gpu-benchmark 2>&1 | tee -a "$OUT/grid.log"
              cp runs/gpu-benchmark/BENCHMARK.md "$OUT/BENCHMARK-gpu.md" ;;
        *) echo "unknown step '$step'; fix: use tree, full, paper, bench, study or grid" >&2; exit 2 ;;
    esac
    echo "$step: $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt"
done
