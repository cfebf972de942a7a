#!/usr/bin/env bash
# The report grid on a GPU machine: Keras on JAX, features from a bank, several runs at once.
#
# Made for a machine that has JAX (CUDA) but neither TensorFlow nor this project's other
# dependencies, nor the corpora. Prepare here (docs/RESULTS.md, "Where and how the runs were
# made"):
#   python -m research.feature_bank build --data ../shared/data --out .bank/bank.npz \
#       --copies 1 --tess-every 2
#   .whl/: wheels of keras, namex, optree, librosa, soundfile, soxr, celery, pydantic-settings
#   and their dependencies that the machine lacks
# then run this script there from the repository root with .bank and .whl alongside.
# Every finished run's JSON lands in research/results/; with OUT set, they and the logs are
# packed into $OUT/results.tgz every 30 s, so a run cut short still returns what finished.
#
#   JOBS   processes training at once on the one GPU (default 8)
#   STOP   seconds after which no process starts another run (default 380)
#   REPORT_ARGS  the grid (default: below, the published one; runs whose JSON exists are
#                skipped, so a second call with the first call's JSONs in place fills the gaps)
set -u
JOBS=${JOBS:-8}
STOP=${STOP:-380}
REPORT_ARGS=${REPORT_ARGS:---protocol speaker-ravdess --protocol speaker-ravdess-with-tess \
--protocol random-ravdess --recipe study --recipe ours --recipe ours-cmn --seeds 0,1,2,3,4 \
--epochs 40}
OUT=${OUT:-/tmp/gpu-grid}
mkdir -p "$OUT" /tmp/gpu-grid-logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
# An equal share of GPU memory per process: allocating on demand instead, two of eight
# processes ran out of memory on an H200.
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax \
    PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache \
    XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $JOBS, 3))")
SER_ACCELERATOR="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
export SER_ACCELERATOR
echo "accelerator: $SER_ACCELERATOR; $(nproc) cores; jobs $JOBS; stop after $STOP s"
# Fail in seconds, not after minutes of parallel jobs, when an import or the bank is broken.
python3 -c "
import keras, jax
from research import feature_bank
from ser_worker.training.experiment import train_and_evaluate_features
bank = feature_bank.load('.bank/bank.npz')
print('keras', keras.__version__, keras.backend.backend(), 'jax', jax.__version__,
      jax.devices(), len(bank.clips), 'clips in the bank')
" || exit 1
touch /tmp/gpu-grid-started
pack() {
    find research/results -name '*.json' -newer /tmp/gpu-grid-started -print0 |
        tar czf "$OUT/results.tgz.part" --null -T - -C /tmp gpu-grid-logs &&
        mv "$OUT/results.tgz.part" "$OUT/results.tgz"
}
(while sleep 30; do pack; done) &
packer=$!
pids=()
for ((shard = 0; shard < JOBS; shard++)); do
    # shellcheck disable=SC2086  # REPORT_ARGS is a list of arguments
    python3 -m research.report run --bank .bank/bank.npz --shard "$shard/$JOBS" \
        --stop-after "$STOP" $REPORT_ARGS >"/tmp/gpu-grid-logs/shard$shard.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill "$packer"
pack
grep -h "json:" /tmp/gpu-grid-logs/*.log | sort
tail -n 3 /tmp/gpu-grid-logs/*.log
exit $status
