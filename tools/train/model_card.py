#!/usr/bin/python3
# model_card.py: refreshes assets/weights/ from a ddpm-train run: the loss curve (loss.png, matplotlib), a
# sample grid made by `ddpm-vk sample` (samples.png) and the model card README.md with the run's figures.
#
# usage: tools/train/model_card.py BUILD_DIR [--run /work/train-run/run] [--eval FILE] [--samples-steps N]
# --eval: the output of `ddpm-eval score` (classifier accuracy, class histogram, Fréchet distances) to quote.
import argparse
import csv
import json
import os
import struct
import subprocess
import sys
import time

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
ASSETS = os.path.join(SRC, 'assets', 'weights')


def st_metadata(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)).get('__metadata__', {})


def st_count(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))
    total = 0
    for k, v in h.items():
        if k != '__metadata__':
            c = 1
            for d in v['shape']:
                c *= d
            total += c
    return total


def plot_loss(csv_path, png, upto):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    steps, loss = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if int(row['step']) > upto:  # rows past the checkpoint the weights come from
                break
            steps.append(int(row['step']))
            loss.append(float(row['loss']))
    smooth, s = [], None
    for v in loss:
        s = v if s is None else 0.98 * s + 0.02 * v
        smooth.append(s)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, loss, lw=0.4, alpha=0.35, label='loss per step')
    ax.plot(steps, smooth, lw=1.5, label='running mean (0.98)')
    ax.set_yscale('log')
    ax.set_xlabel('optimizer step (batch 32)')
    ax.set_ylabel('DDPM simple loss (MSE of epsilon)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    return steps[-1] if steps else 0, smooth[-1] if smooth else float('nan')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('build')
    ap.add_argument('--run', default='/work/train-run/run')
    ap.add_argument('--eval', default=None)
    ap.add_argument('--eval-steps', type=int, default=10, help='DDIM steps of the 1,000 scored samples')
    ap.add_argument('--sample-steps', type=int, default=50)
    a = ap.parse_args()
    model = os.path.join(ASSETS, 'fashion-mnist.safetensors')
    ckpt = st_metadata(os.path.join(a.run, 'checkpoint.safetensors'))
    meta = st_metadata(model)
    cfg = json.loads(meta['ddpm.config'])
    params = st_count(model)
    last_step, last_loss = plot_loss(os.path.join(a.run, 'loss.csv'), os.path.join(ASSETS, 'loss.png'),
                                     int(ckpt['step']))
    vk = os.path.join(os.path.abspath(a.build), 'ddpm-vk')
    sample_cmd = ['ddpm-vk', 'sample', '--model', 'assets/weights/fashion-mnist.safetensors', '--device', 'cpu',
                  '--sampler', 'ddim', '--steps', str(a.sample_steps), '-n', '64', '--seed', '0', '--out',
                  'assets/weights/samples.png']
    subprocess.run([vk] + sample_cmd[1:], cwd=SRC, check=True, env=dict(os.environ, OMP_NUM_THREADS='2'))
    step = int(ckpt['step'])
    seconds = float(ckpt['seconds'])
    train_cmd = 'tools/train/fashion-mnist.sh build /work/train-run'
    with open(os.path.join(SRC, 'tools', 'train', 'fashion-mnist.sh')) as f:
        script = f.read()
    args = script[script.index('exec "$build/tools/train/ddpm-train"'):].replace('exec "$build/tools/train/ddpm-train"',
                                                                                 'ddpm-train')
    evaltxt = open(a.eval).read().strip() if a.eval else None
    images = step * 32
    card = f"""# fashion-mnist.safetensors: a DDPM U-Net trained on Fashion-MNIST by ddpm-train

The default model of `ddpm-vk sample`: 28x28 greyscale garments (the ten Fashion-MNIST classes), EMA weights
stored as F16, config and schedule in the safetensors metadata (diffusers `UNet2DModel` names).

| | |
| --- | --- |
| architecture | UNet2DModel, block_out_channels {cfg['block_out_channels']}, layers_per_block {cfg['layers_per_block']}, {cfg['down_block_types']} / {cfg['up_block_types']}, mid-block attention, GroupNorm {cfg['norm_num_groups']} groups, one attention head |
| parameters | {params:,} |
| schedule | linear betas 1e-4 .. 0.02, T = 1000, epsilon prediction |
| data | Fashion-MNIST training set, 60,000 images 28x28, scaled to [-1, 1], no flips |
| optimizer | AdamW lr 4e-4 (200 warmup steps, then constant), betas 0.9 / 0.999, no weight decay, gradient norm clipped to 1, batch 32, EMA 0.999 |
| trained so far | **{step:,} steps** ({images:,} images, {images / 60000:.2f} epochs), {seconds / 3600:.2f} h in training steps (wall clock, sample grids and checkpoints excluded) on 2 CPU cores shared with other work (status {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) |
| last running-mean loss | {last_loss:.4f} at step {last_step:,} |

**Status: these are the weights at step {step:,}; longer training still lowers the loss.** The samples are
recognisable garments of every class; the Fréchet distance below says how far they remain from real images.
The run resumes from its checkpoint (`/work/train-run/run/checkpoint.safetensors`, outside git; the
checkpoint of these weights is committed in `tools/train/fashion-mnist-run/` for a fresh machine), and this
file and the weights are refreshed from it.

## Samples

`{' '.join(sample_cmd)}`

![samples](samples.png)

## Loss

![loss](loss.png)

## Reproduce

```sh
tools/install-deps --train
meson setup build && ninja -C build
{train_cmd}      # runs (or resumes) ddpm-train; SIGTERM checkpoints and stops
tools/train/model_card.py build --run /work/train-run/run   # this card, loss.png, samples.png
```

A rerun reproduces the run bit for bit only with the same trainer build and thread count: the checkpoints
hold everything else (weights, EMA, AdamW moments, step; data order, noise and timesteps follow from the seed
and the step). This run switched trainer builds on the way, each time with the same numerics up to float
rounding: a faster CPU backward at step 192; from step 3,686 on, direct AVX-512 and Winograd convolutions with
vectorised GroupNorm and softmax (about 2x the images per CPU-second of the first build).
The script runs exactly (with OMP_NUM_THREADS=2, OMP_WAIT_POLICY=passive, OPENBLAS_NUM_THREADS=1):

```sh
{args.strip()}
```
"""
    if evaltxt:
        card += f"""
## Quality

A small CNN classifier (conv 1-16, 16-32 /2, 32-64 /2, linear 3136-64, linear 64-10, SiLU) trained with the
project's own CPU forward/backward and AdamW, then its 64-d penultimate features of 1,000 samples against the
test set (images 1000..9999), next to 1,000 held-out real test images (0..999):

```sh
build/ddpm-vk sample --device cpu --sampler ddim --steps {a.eval_steps} -n 1000 --seed 1 --save-raw samples.npy --out s.png
build/tools/eval/ddpm-eval score --classifier tools/eval/classifier.safetensors --samples samples.npy
```

```
{evaltxt}
```

The classifier is committed (`tools/eval/classifier.safetensors`, 0.9 MB), so these figures need only the
sampler; it was made by `OMP_NUM_THREADS=1 build/tools/eval/ddpm-eval train --out
tools/eval/classifier.safetensors --epochs 3` (its test accuracy is the first line above).
"""
    with open(os.path.join(ASSETS, 'README.md'), 'w') as f:
        f.write(card)
    print(f'model card: step {step}, {seconds / 3600:.2f} h, {params} params')


if __name__ == '__main__':
    main()
