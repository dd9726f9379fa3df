# train_step.py: two ddpm-train steps of a tiny U-Net in PyTorch autograd: the DDPM simple loss (epsilon),
# its gradients, clip_grad_norm_ and torch.optim.AdamW; the fixture tests/test_train_step.c compares with.
import json
import os

import torch
import torch.nn.functional as F

import stio
import unet

# ddpm-train's conventions: diffusers' current defaults (eps 1e-5, symmetric downsample padding,
# flip_sin_to_cos, freq_shift 0), one attention head
CFG = unet.unet_config(in_channels=2, out_channels=2, sample_size=8, block_out_channels=[8, 16],
                       down_block_types=['DownBlock2D', 'AttnDownBlock2D'],
                       up_block_types=['AttnUpBlock2D', 'UpBlock2D'], layers_per_block=1, norm_num_groups=4,
                       norm_eps=1e-5, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0)
SCHED = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'linear', 'beta_start': 0.0001, 'beta_end': 0.02,
         'num_train_timesteps': 1000, 'prediction_type': 'epsilon', 'variance_type': 'fixed_small',
         'clip_sample': True, 'clip_sample_range': 1.0, 'steps_offset': 0, 'set_alpha_to_one': True}
OPT = {'lr': 0.01, 'betas': (0.9, 0.95), 'eps': 1e-6, 'weight_decay': 0.1}
MAX_NORM = 0.5


def make(outdir):
    gen = torch.Generator().manual_seed(4242)
    model = unet.UNet2DModel(CFG)
    unet.randomize(model, gen)
    B, S, C = 3, CFG['sample_size'], CFG['in_channels']
    x0 = torch.rand((B, C, S, S), generator=gen) * 2 - 1
    noise = torch.randn((B, C, S, S), generator=gen)
    t = torch.tensor([0.0, 417.0, 999.0])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)[t.long()]
    xt = (acp.sqrt().float()[:, None, None, None] * x0 + (1 - acp).sqrt().float()[:, None, None, None] * noise)
    names = [n for n, _ in model.named_parameters()]
    out = {'xt': xt, 't': t, 'target': noise}
    for n, p in model.named_parameters():
        out['w0.' + n] = p.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), **OPT)
    meta = {}
    for step in (1, 2):
        pred = model(xt, t)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            out[f'g{step}.{n}'] = p.grad.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        for n, p in model.named_parameters():
            out[f'w{step}.{n}'] = p.detach().clone()
        if step == 1:
            out['out1'] = pred.detach()
        meta[f'loss{step}'] = repr(loss.item())
        meta[f'norm{step}'] = repr(norm.item())
        print(f'train_step: step {step} loss {loss.item():.6f} grad norm {norm.item():.4f}')
    meta.update({'ddpm.config': json.dumps(CFG, sort_keys=True), 'ddpm.scheduler': json.dumps(SCHED),
                 'lr': repr(OPT['lr']), 'beta1': repr(OPT['betas'][0]), 'beta2': repr(OPT['betas'][1]),
                 'eps': repr(OPT['eps']), 'weight_decay': repr(OPT['weight_decay']), 'max_norm': repr(MAX_NORM),
                 'params': json.dumps(names)})
    stio.save(os.path.join(outdir, 'train_step.safetensors'), out, meta)
