#!/usr/bin/env bash
# The train-step benchmark on one GPU, as the README's table records it: bf16 (and f32) paper
# config, B=128, 512 / 1024 / 2048 px. Writes one log per run into ${OUT:-/tmp}.
set -uo pipefail
out="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
bench() {
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$python" -m benchmarks.bench_train_step --config paper --peak_n 8192 \
    --repeats 5 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" | tee "$out/$name.txt"
}
[ -n "${ONLY:-}" ] && { bench only ${LIMIT_ONLY:-200} $ONLY; exit; }
bench bf16_2048 ${LIMIT_2048:-240} --dtype bfloat16 --image_sizes 2048 --batch_sizes 128
bench bf16_512_1024 ${LIMIT_SMALL:-150} --dtype bfloat16 --image_sizes 512,1024 --batch_sizes 128
bench f32_2048 ${LIMIT_F32:-120} --dtype float32 --image_sizes 2048 --batch_sizes 128
