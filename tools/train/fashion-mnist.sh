#!/bin/sh
# fashion-mnist.sh: the training run of the shipped model assets/weights/fashion-mnist.safetensors.
# Resumes RUN_DIR/run/checkpoint.safetensors when it exists (bit-identically on the same machine/threads),
# else the one committed in tools/train/fashion-mnist-run/.
#   tools/train/fashion-mnist.sh BUILD_DIR [RUN_DIR]      (needs tools/install-deps --train)
set -eu
build=$(cd "${1:?usage: fashion-mnist.sh BUILD_DIR [RUN_DIR]}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
dir=${2:-/work/train-run}
mkdir -p "$dir"
cd "$dir"
# a fresh machine starts from the checkpoint committed at the end of the last session, if any
seed="$src/tools/train/fashion-mnist-run"
if [ ! -f run/checkpoint.safetensors ] && [ -f "$seed/checkpoint.safetensors" ]; then
    mkdir -p run
    cp "$seed/checkpoint.safetensors" "$seed/loss.csv" run/
fi
resume=""
[ -f run/checkpoint.safetensors ] && resume="--resume"
OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1 exec "$build/tools/train/ddpm-train" \
    --data /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz --out run \
    --blocks 32,64,64 --attn 0,1,0 --layers 1 --groups 8 --batch 32 --lr 4e-4 --warmup 200 --ema 0.999 \
    --clip 1 --seed 1 --steps 200000 --ckpt-minutes 4 --sample-every 250 --sample-n 16 --sample-steps 25 \
    --export "$src/assets/weights/fashion-mnist.safetensors" $resume
