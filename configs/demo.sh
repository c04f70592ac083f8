#!/usr/bin/env bash
# The tiny end-to-end example (CPU, 2 MPI ranks): corpus -> HDF5 shards -> a small base
# model pretrained by projcompd -> compressed to about 12% of its parameters by
# Projected Compression and by hard pruning + retraining (same indices, same tokens) ->
# every model evaluated on the same held-out windows -> a results table and a plot.
# Usage: bash configs/demo.sh [BUILD_DIR]   (run.sh demo calls it after setup)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/daemon
NP=${PROJCOMP_DEMO_NP:-2}
OUT=runs/demo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe -np $NP"
step() { printf '\n== %s\n' "$*" >&2; }

mkdir -p "$OUT/corpus"
if [ ! -f "$OUT/data/.done" ]; then
    step "corpus: King James Bible (public domain), byte-level tokens"
    # one document per chapter: a blank line whenever the chapter number changes
    bible -f "Gen1:1-Rev22:21" |
        awk '{ split($1, a, ":"); if (NR > 1 && a[1] != prev) print ""; prev = a[1];
               sub(/^[^ ]+ /, ""); print }' >"$OUT/corpus/kjv.txt"
    rm -rf "$OUT/data"
    "$BIN/projcomp-data" --out "$OUT/data" --valid-fraction 0.02 "$OUT/corpus/kjv.txt"
    touch "$OUT/data/.done"
fi

if [ ! -f "$OUT/base/final/config.json" ]; then
    step "pretrain the tiny base model ($NP ranks)"
    rm -rf "$OUT/base"
    $MPIRUN "$BIN/projcompd" --cfg configs/demo-base.yaml
else
    step "reusing the base model in $OUT/base/final"
fi

for mode in compress prune; do
    step "$mode: $(grep -E '^  (d_model|d_ff):' configs/demo-compress.yaml | tr -s ' \n' ' ')($NP ranks)"
    rm -rf "${OUT:?}/$mode"
    $MPIRUN "$BIN/projcompd" --cfg configs/demo-compress.yaml --set run.mode=$mode --set run.dir="$OUT/$mode"
done

for m in base compress prune; do
    step "evaluate $m"
    rm -rf "${OUT:?}/eval-$m"
    $MPIRUN "$BIN/projcompd" --cfg configs/demo-eval.yaml --set run.dir="$OUT/eval-$m" \
        --set model.base="$OUT/$m/final" >/dev/null
done

step "plot"
"$BIN/projcomp-plot" -o "$OUT/curves.png" --title "demo: Projected Compression vs hard pruning" \
    "$OUT/compress=projected compression" "$OUT/prune=hard prune + retrain" >/dev/null

step "results"
python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
rows = [(m, f"{out}/eval-{m}") for m in ("base", "prune", "compress")]
print(f"{'model':<8} {'params':>10} {'val loss':>9} {'ppl':>8}")
for name, run in rows:
    last = [m for m in map(json.loads, filter(str.strip, open(f"{run}/metrics.jsonl"))) if "val_loss" in m][-1]
    print(f"{name:<8} {last['params']:>10,} {last['val_loss']:>9.4f} {math.exp(last['val_loss']):>8.3f}")
PY
echo "loss curves: $OUT/curves.png"
echo "fused models (standard HF Llama): $OUT/compress/final $OUT/prune/final"
