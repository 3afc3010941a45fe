#!/usr/bin/env bash
# Whole-network fine-tuning runs on a GPU machine that has PyTorch but no TensorFlow (ml/finetune.py).
#
#   usage: scripts/gpu_finetune.sh PACK_DIR OUT_DIR SECONDS "SIZE:EPOCHS:SEED[:FOLD] ..."
#
# OUT_DIR receives NAME.keras + NAME.json per run; the logs go to LOGDIR (default OUT_DIR). A run with
# FOLD (a pack written with --folds K) trains on the other folds and saves NAME.weights16.npz instead,
# for ml.crossval; e.g. K-fold with 4 folds plus the refit on everything:
#   scripts/gpu_finetune.sh var/cv_pack OUT 560 "192:12:2:0 192:12:2:1 192:12:2:2 192:12:2:3 192:12:2"
# Needs Keras 3 and the pack written here by `python -m ml.finetune pack`. A machine without Keras gets
# it from wheels in .whl/ (installed to /tmp/site), fetched beforehand where pip works, e.g. for 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 The runs go in parallel on the one GPU (the model is small: one run
# leaves it mostly idle); each stops, marked incomplete, if it would pass SECONDS from now.
set -u
PACK=${1:?pack dir}
OUTD=${2:?out dir}
SECONDS_BUDGET=${3:?seconds}
RUNS=${4:-"192:15:1"}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=${KERAS_BACKEND:-torch} PYTHONUNBUFFERED=1
LOGDIR=${LOGDIR:-$OUTD}
mkdir -p "$OUTD" "$LOGDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import keras, torch; print('keras', keras.__version__, keras.backend.backend(), 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
stop_at=$(( $(date +%s) + SECONDS_BUDGET ))
pids=()
for run in $RUNS; do
    IFS=: read -r size epochs seed fold <<<"$run"
    name="finetune_s${size}_e${epochs}_seed${seed}"
    extra=()
    if [ -n "${fold:-}" ]; then
        name="${name}_fold${fold}"
        extra=(--fold "$fold" --save weights16)
    fi
    python3 -m ml.finetune fit --pack "$PACK" --out "$OUTD" --input-size "$size" --epochs "$epochs" \
        --seed "$seed" --name "$name" --stop-at "$stop_at" "${extra[@]}" >"$LOGDIR/$name.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
for f in "$LOGDIR"/*.log; do echo "== $f"; grep -E "^(pack|wrote|Traceback|[A-Za-z]*Error)|accuracy" "$f" | tail -n 16; done
exit $rc
