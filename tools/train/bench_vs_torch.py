#!/usr/bin/python3
# bench_vs_torch.py: trains the same U-Net with PyTorch (tests/torch_ref/unet.py, AdamW, batch 64) and with
# ddpm-train in one run, on the same thread count, and prints both img/s and their ratio.
#
# usage: tools/train/bench_vs_torch.py BUILD/tools/train/ddpm-train [--steps N] [--threads N] [--batch N]
# The network is the issue's: ch 32, block_out_channels (32, 64, 64), one res block per level, attention at
# 14x14 (level 1) and in the middle block, 28x28x1. ddpm-train runs first; its exported model's config
# (safetensors metadata) builds the torch model, so both train exactly the same architecture.
# Besides wall-clock img/s it prints CPU-seconds per image (all threads): on a machine shared with other
# work, wall time depends on the neighbours, CPU time much less. Both runs get the same environment.
# For scale it also prints each trainer's arithmetic rate (a training step is taken as 3x the forward's
# FLOPs, the count ddpm-train prints) next to what a large square sgemm reaches on the same threads: the
# machine's practical float32 peak, which a trainer's nominal rate can pass only by doing fewer
# multiplications than the count (Winograd convolutions do).
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'tests', 'torch_ref'))


def st_metadata(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n))['__metadata__']


def run_ddpm_train(exe, out, steps, batch, threads, data):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # the torch run sets the same count
    cmd = [exe, '--out', out, '--steps', str(steps), '--batch', str(batch), '--blocks', '32,64,64',
           '--attn', '0,1,0', '--layers', '1', '--sample-every', '0', '--ckpt-minutes', '0', '--quiet']
    if data:
        cmd += ['--data', data]
    p = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit('bench: ddpm-train failed:\n' + p.stderr)
    rate = cpu = gflop = None
    for line in p.stderr.splitlines():
        if 'GFLOP/image forward' in line:
            gflop = float(line.split(' GFLOP/image forward')[0].split()[-1])
        if 'img/s (training only)' in line:
            rate = float(line.split(' img/s')[0].split()[-1])
            cpu = float(line.split(' CPU-s/img')[0].split()[-1])
    if rate is None or gflop is None:
        sys.exit('bench: no img/s or GFLOP line from ddpm-train:\n' + p.stderr)
    return rate, cpu, gflop, os.path.join(out, 'model.safetensors')


def run_torch(cfg, steps, batch, threads):
    import torch
    import unet
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = unet.UNet2DModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ema = [p.detach().clone() for p in model.parameters()]
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0).float()
    s = cfg['sample_size']
    c = cfg['in_channels']

    def step():
        x0 = torch.rand(batch, c, s, s) * 2 - 1
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn_like(x0)
        a = acp[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(xt, t.float()), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.9995).add_(p, alpha=0.0005)

    step()  # warm-up: allocator, first-touch
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    n = steps * batch
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n, torch.__version__


def sgemm_rate(threads, n=2048, reps=5):
    """GFLOP/s of an n x n x n float32 matrix product (torch.mm) on `threads` threads: the machine's practical
    peak. In a child process whose BLAS thread variables say `threads`, whatever this one's environment says."""
    code = ('import time, torch\n'
            f'torch.set_num_threads({threads})\n'
            f'a, b = torch.randn({n}, {n}), torch.randn({n}, {n})\n'
            'torch.mm(a, b)\n'
            't0 = time.perf_counter()\n'
            f'for _ in range({reps}):\n'
            '    torch.mm(a, b)\n'
            f'print(2.0 * {n} ** 3 * {reps} / (time.perf_counter() - t0) / 1e9)\n')
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, text=True, check=True)
    return float(p.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('ddpm_train')
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--data', default=None, help='ddpm-train --data (default: its Fashion-MNIST default)')
    ap.add_argument('--wait-policy', default='passive', choices=['passive', 'active', 'default'],
                    help='OMP_WAIT_POLICY for both runs (passive: idle threads sleep instead of spinning, which '
                         'matters on a machine shared with other work)')
    ap.add_argument('--torch-blas-threads', type=int, default=1,
                    help='OPENBLAS_NUM_THREADS for the PyTorch run (default 1: its OpenBLAS pool, used for the '
                         'matrix products, otherwise competes with its OpenMP threads, which was slower here: '
                         '81 against 94 img/s); ddpm-train keeps OpenBLAS on one thread per OpenMP thread itself')
    a = ap.parse_args()
    # before torch is imported: OpenBLAS reads it when it loads
    os.environ['OPENBLAS_NUM_THREADS'] = str(a.torch_blas_threads)
    if a.wait_policy != 'default':
        os.environ['OMP_WAIT_POLICY'] = a.wait_policy  # both libgomp users (ddpm-train, torch) read it
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_cpu, gflop, model = run_ddpm_train(a.ddpm_train, os.path.join(tmp, 'run'), a.steps, a.batch, a.threads, a.data)
        cfg = json.loads(st_metadata(model)['ddpm.config'])
    theirs, theirs_cpu, version = run_torch(cfg, a.steps, a.batch, a.threads)
    peak = sgemm_rate(a.threads)
    print(f'network: block_out_channels {cfg["block_out_channels"]}, layers_per_block {cfg["layers_per_block"]}, '
          f'{cfg["down_block_types"]}, {cfg["sample_size"]}x{cfg["sample_size"]}x{cfg["in_channels"]}; '
          f'batch {a.batch}, {a.threads} threads, {a.steps} steps each, OMP_WAIT_POLICY {a.wait_policy}, '
          f'OPENBLAS_NUM_THREADS {a.torch_blas_threads} for PyTorch')
    print(f'pytorch {version}: {theirs:.2f} img/s, {theirs_cpu:.4f} CPU-s/img')
    print(f'ddpm-train:         {ours:.2f} img/s, {ours_cpu:.4f} CPU-s/img')
    print(f'ratio ddpm-train / pytorch: {ours / theirs:.2f}x img/s, {theirs_cpu / ours_cpu:.2f}x img per CPU-s')
    step = 3 * gflop
    print(f'arithmetic ({step:.2f} GFLOP per training image): pytorch {theirs * step:.0f} GFLOP/s, ddpm-train '
          f'{ours * step:.0f} GFLOP/s; a 2048^3 sgemm on {a.threads} threads: {peak:.0f} GFLOP/s '
          f'(= {peak / step:.0f} img/s if training ran at that rate)')


if __name__ == '__main__':
    main()
