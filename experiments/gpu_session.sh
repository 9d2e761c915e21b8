#!/usr/bin/env bash
# One prepared session on a lent GPU machine (no network there): install the carried
# wheels, prepare the carried CamVid copy, benchmark, then train the CamVid recipe:
# FCN-32s -> 16s -> 8s staged, and FCN-8s at once (HELDOUT=1: the same on train_seen,
# selected on the held-out drive: experiments/camvid_gpu_heldout.py). Small results land in $OUT.
#
# Carried (git-ignored) beside the repo:
#   .whl/           wheels missing on the GPU image (tfds, grain, ml_collections, ...)
#   .gdata/camvid/  CamVid: train images as JPEG q90, val images lossless WebP (pixels
#                   identical to the PNGs), labels PNG -- to fit the 64 MiB transfer limit.
# Per-stage time limits keep the whole session inside one call; a stage that hits its
# limit keeps its checkpoints and val evaluations so far.
set -u
OUT=${OUT:-/tmp/gpu_out}
REPO=$(pwd)
WORK=/tmp/fcn_work  # runs/ and data/ live here; staged configs find runs/camvid_fcn32s
mkdir -p "$WORK"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, optax, orbax.checkpoint, tensorflow_datasets as t, grain, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'tfds', t.__version__, jax.devices())" || exit 1
python3 -m fcn_jax prepare camvid --source .gdata/camvid --out $WORK/data || exit 1
stamp prepared

if [ "${BENCH_S:-0}" -gt 0 ]; then
  timeout "$BENCH_S" python3 benchmarks/throughput.py --no-torch --variants ${BENCH_VARIANTS:-8s} --batch-size 16 --dtype bfloat16 --steps 10 2>&1 | tail -25
  stamp benchmarked
fi

collect() {  # one archive per run (each file that comes back is limited to 16 MB)
  (cd "$WORK" && tar czf "$OUT/$1.tar.gz" --exclude=checkpoints --exclude=best --exclude=tensorboard "runs/$1" 2>/dev/null)
}

# train NAME LIMIT_S CONFIG [overrides...]: a NaN stop (exit 3) retries once at half the
# learning rate, resuming from the last checkpoint saved before the loss went non-finite
# (a learning-rate change is a compatible change: nothing is deleted).
train() {
  local name=$1 limit=$2 config=$3; shift 3
  (cd "$WORK" && timeout "$limit" python3 -m fcn_jax train --config "$REPO/experiments/$config" \
      --workdir "runs/$name" --config.data.data_dir=$WORK/data --config.data.num_threads=16 "$@")
  local rc=$?
  if [ $rc -eq 3 ]; then
    stamp "$name: non-finite loss, retrying at half the learning rate"
    (cd "$WORK" && timeout "$limit" python3 -m fcn_jax train --config "$REPO/experiments/$config" \
        --workdir "runs/$name" --config.data.data_dir=$WORK/data --config.data.num_threads=16 \
        --config.optimizer.learning_rate=${LR_RETRY:-1e-4} "$@")
    rc=$?
  fi
  stamp "$name: exit $rc"
  (cd "$WORK" && python3 -m fcn_jax report --workdir "runs/$name" >/dev/null 2>&1)
  collect "$name"
}

if [ "${HELDOUT:-0}" = 1 ]; then  # the recipe on train_seen, selected on the held-out drive
  train heldout_fcn32s "${T32:-150}" camvid_gpu_heldout.py:32s ${EXTRA32:-}
  train heldout_fcn16s "${T16:-90}" camvid_gpu_heldout.py:16s ${EXTRA16:-}
  train heldout_fcn8s "${T8:-90}" camvid_gpu_heldout.py:8s ${EXTRA8:-}
  train heldout_fcn8s_atonce "${T8A:-120}" camvid_gpu_heldout.py:8s_atonce ${EXTRA8A:-}
else
  train camvid_fcn32s "${T32:-150}" camvid_fcn32s.py ${EXTRA32:-}
  train camvid_fcn16s "${T16:-90}" camvid_fcn16s.py ${EXTRA16:-}
  train camvid_fcn8s "${T8:-90}" camvid_fcn8s.py ${EXTRA8:-}
  train camvid_fcn8s_atonce "${T8A:-120}" camvid_fcn8s.py:atonce ${EXTRA8A:-}
fi
for r in "$WORK"/runs/*/; do
  echo "== $r"
  for split in heldout val; do grep "\"split\": \"$split\"" "$r/metrics.jsonl" | tail -1 | cut -c1-400; done
done
stamp done
