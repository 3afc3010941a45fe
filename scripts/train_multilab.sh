#!/usr/bin/env bash
# The eight-class, two-lab model and its leave-one-lab-out proof, in order (2 CPUs: ~2 hours; the
# 200 px crop cache ~6 min, the shipped fit ~45 min, PBC-only ~40 min, BCCD-only ~15 min).
# Every step writes under var/models/; the held-out test splits are read only by `evaluate`,
# once per candidate, after the candidate is fixed and has passed the non-blood check
# (install it in ml/artifacts and run `pytest ml` between the two steps).
#   PBC=/path/to/PBC_dataset_normal_DIB scripts/train_multilab.sh fit
#   PBC=/path/to/PBC_dataset_normal_DIB scripts/train_multilab.sh evaluate
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BCCD=${BCCD:-../shared/datasets/bccd-wbc}
PBC=${PBC:?set PBC to the extracted PBC_dataset_normal_DIB folder (see ../shared/datasets/pbc/README.md)}
SPLIT=${SPLIT:-../shared/datasets/pbc/split.csv}
CACHE=${CACHE:-var/mlcache}
EPOCHS=${EPOCHS:-5}  # the shipped bundle: head epoch + 5 (card: config.epochs)
OUT=${OUT:-var/models}

[ -f "$CACHE/cache.json" ] || $PY -m ml.multilab cache --bccd "$BCCD" --pbc "$PBC" "$SPLIT" --out "$CACHE"
STEP=${1:?usage: train_multilab.sh fit|evaluate}
run() {  # name sources eval-sources epochs
  local dir="$OUT/$1"
  if [ "$STEP" = fit ]; then
    [ -f "$dir/model_card.json" ] && return 0
    $PY -m ml.multilab fit --cache "$CACHE" --sources "$2" --epochs "$4" --out "$dir.tmp"
    $PY -m ml.oodcal --bundle "$dir.tmp"
    mv "$dir.tmp" "$dir"
  else
    [ -f "$dir/test_eval.json" ] || $PY -m ml.multilab evaluate --model "$dir" --cache "$CACHE" --sources "$3" --json "$dir/test_eval.json" --update-card
  fi
}
run multilab bccd,pbc bccd,pbc "$EPOCHS"       # the shipped recipe on both labs
run lolo_bccd bccd pbc "$EPOCHS"               # BCCD TRAIN only -> PBC test (its 4 BCCD classes)
run lolo_pbc pbc bccd "$EPOCHS"                # PBC train only -> BCCD TEST
