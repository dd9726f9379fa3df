# sched.py: an independent float64 reimplementation of diffusers' DDPMScheduler and DDIMScheduler
# (betas, set_timesteps, step) and of the DDIM paper's uniform / quad timesteps; writes sched.safetensors.
import json
import math
import os

import numpy as np
import torch

import stio

F64 = torch.float64


# ---- betas -------------------------------------------------------------------------------------------

def make_betas(kind, T, bs, be):
    """The beta schedules, in float64 (diffusers builds them in float32; the formulas are the same)."""
    if kind == 'linear':  # diffusers: torch.linspace(beta_start, beta_end, T)
        return torch.linspace(bs, be, T, dtype=F64)
    if kind == 'scaled_linear':  # diffusers: torch.linspace(sqrt(bs), sqrt(be), T) ** 2
        return torch.linspace(bs ** 0.5, be ** 0.5, T, dtype=F64) ** 2
    if kind == 'quad':  # DDPM paper code (get_beta_schedule): np.linspace(sqrt(bs), sqrt(be), T) ** 2
        return torch.from_numpy(np.linspace(bs ** 0.5, be ** 0.5, T, dtype=np.float64) ** 2)
    if kind == 'sigmoid':  # diffusers (GeoDiff): sigmoid(linspace(-6, 6, T)) * (be - bs) + bs
        return torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=F64)) * (be - bs) + bs
    if kind == 'squaredcos_cap_v2':  # diffusers betas_for_alpha_bar, Glide's cosine, capped at 0.999
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        out = [min(1.0 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
        return torch.tensor(out, dtype=F64)
    raise ValueError(kind)


# ---- timesteps ---------------------------------------------------------------------------------------

def diffusers_timesteps(spacing, T, S, steps_offset=0):
    """diffusers set_timesteps(S) for timestep_spacing linspace / leading / trailing (descending)."""
    if spacing == 'linspace':
        ts = np.linspace(0, T - 1, S).round()[::-1].copy().astype(np.int64)
    elif spacing == 'leading':
        ratio = T // S
        ts = (np.arange(0, S) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == 'trailing':
        ratio = T / S
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
        ts = ts[:S]  # float rounding can make arange one longer; its extra entry is -1
    else:
        raise ValueError(spacing)
    return [int(v) for v in ts]


def paper_timesteps(spacing, T, S):
    """The DDIM paper's code: uniform range(0, T, T // S) (first S), quad int(linspace(0, sqrt(.8T), S)^2)."""
    if spacing == 'uniform':
        seq = list(range(0, T, T // S))[:S]
    else:
        seq = [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)]
    return seq[::-1]


def timesteps(kind, spacing, T, S, steps_offset=0):
    """The visited timesteps (descending), or None when the spacing repeats a timestep / leaves 0..T-1."""
    if spacing == 'default':
        if kind == 'ddpm' and S == T:
            return list(range(T - 1, -1, -1))
        spacing = 'leading'
    if spacing in ('uniform', 'quad'):
        ts = paper_timesteps(spacing, T, S)
    else:
        ts = diffusers_timesteps(spacing, T, S, steps_offset)
    if len(set(ts)) != len(ts) or min(ts) < 0 or max(ts) >= T:
        return None
    return ts


def prev_timestep(spacing, ts, i, T, S):
    """diffusers steps to t - T // S for its own spacings; the DDIM paper's code to the next in its list."""
    if spacing in ('uniform', 'quad'):
        return ts[i + 1] if i + 1 < len(ts) else -1
    return ts[i] - T // S


# ---- the schedulers' step ----------------------------------------------------------------------------

class Sched:
    def __init__(self, beta_schedule='linear', T=1000, beta_start=1e-4, beta_end=0.02,
                 variance_type='fixed_small', clip_sample=True, clip_sample_range=1.0,
                 prediction_type='epsilon', set_alpha_to_one=True, steps_offset=0):
        self.T = T
        self.betas = make_betas(beta_schedule, T, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.variance_type = variance_type
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.prediction_type = prediction_type
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=F64) if set_alpha_to_one else self.alphas_cumprod[0]
        self.one = torch.tensor(1.0, dtype=F64)

    def _x0_and_eps(self, out, t, x):
        a = self.alphas_cumprod[t]
        b = 1 - a
        if self.prediction_type == 'epsilon':
            return (x - b ** 0.5 * out) / a ** 0.5, out
        if self.prediction_type == 'sample':
            return out, (x - a ** 0.5 * out) / b ** 0.5
        if self.prediction_type == 'v_prediction':
            return a ** 0.5 * x - b ** 0.5 * out, a ** 0.5 * out + b ** 0.5 * x
        raise ValueError(self.prediction_type)

    def ddpm_step(self, out, t, x, prev_t, noise):
        """DDPMScheduler.step with fixed_small / fixed_large variance; noise only when t > 0."""
        apt = self.alphas_cumprod[t]
        app = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        bpt, bpp = 1 - apt, 1 - app
        cur_alpha = apt / app
        cur_beta = 1 - cur_alpha
        x0, _ = self._x0_and_eps(out, t, x)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        mean = (app ** 0.5 * cur_beta / bpt) * x0 + (cur_alpha ** 0.5 * bpp / bpt) * x
        if t > 0:
            var = torch.clamp(bpp / bpt * cur_beta, min=1e-20)
            if self.variance_type == 'fixed_large':
                var = cur_beta
            mean = mean + var ** 0.5 * noise
        return mean

    def ddim_step(self, out, t, x, prev_t, eta, noise):
        """DDIMScheduler.step, use_clipped_model_output False: eps from the unclipped prediction."""
        apt = self.alphas_cumprod[t]
        app = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = self._x0_and_eps(out, t, x)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        variance = (1 - app) / (1 - apt) * (1 - apt / app)
        std = eta * variance ** 0.5
        prev = app ** 0.5 * x0 + (1 - app - std ** 2) ** 0.5 * eps
        if eta > 0:
            prev = prev + std * noise
        return prev


# ---- the fixture -------------------------------------------------------------------------------------

BETA_CASES = [('linear', 1e-4, 0.02), ('scaled_linear', 0.00085, 0.012), ('squaredcos_cap_v2', 1e-4, 0.02),
              ('quad', 1e-4, 0.02), ('sigmoid', 1e-4, 0.02)]


def hi_lo(t):
    """A float64 tensor as two float32 tensors hi + lo (about 48 significant bits)."""
    a = np.asarray(t, dtype=np.float64)
    hi = a.astype(np.float32)
    lo = (a - hi.astype(np.float64)).astype(np.float32)
    return hi, lo


def make(outdir):
    tensors, cases = {}, []

    # betas and alphas_cumprod for every schedule, T = 1000 and 37
    for kind, bs, be in BETA_CASES:
        for T in (1000, 37):
            s = Sched(kind, T, bs, be)
            for name, v in (('betas', s.betas), ('acp', s.alphas_cumprod)):
                hi, lo = hi_lo(v)
                tensors[f'{name}.{kind}.{T}.hi'] = hi
                tensors[f'{name}.{kind}.{T}.lo'] = lo

    # timesteps of T = 1000 for every spacing (-1 marks a refused spacing)
    T = 1000
    ts_cases = []
    for S in (10, 37, 1000):
        for kind, spacing in (('ddpm', 'default'), ('ddim', 'default'), ('ddim', 'uniform'), ('ddim', 'quad'),
                              ('ddim', 'leading'), ('ddim', 'trailing'), ('ddim', 'linspace')):
            for off in ((0, 1) if spacing == 'leading' else (0,)):
                ts = timesteps(kind, spacing, T, S, off)
                name = f'ts.{kind}.{spacing}.{S}.{off}'
                tensors[name] = np.array(ts if ts is not None else [-1], dtype=np.float32)
                ts_cases.append({'name': name, 'sampler': kind, 'spacing': spacing, 'steps': S,
                                 'steps_offset': off, 'T': T, 'refused': ts is None})

    # single steps on a small random x, model output and noise
    g = torch.Generator().manual_seed(20240607)
    shape = (2, 3, 4, 5)
    x = torch.randn(shape, generator=g, dtype=F64) * 1.3
    out = torch.randn(shape, generator=g, dtype=F64)
    z = torch.randn(shape, generator=g, dtype=F64)
    tensors['step.x'] = x
    tensors['step.out'] = out
    tensors['step.z'] = z

    def add_step(sampler, beta, pred, clip, S, spacing, i, variance='fixed_small', eta=0.0, one=True, off=0):
        bs, be = {k: (a, b) for k, a, b in BETA_CASES}[beta]
        sch = Sched(beta, 1000, bs, be, variance_type=variance, clip_sample=clip, prediction_type=pred,
                    set_alpha_to_one=one, steps_offset=off)
        ts = timesteps(sampler, spacing, 1000, S, off)
        t = ts[i]
        prev = prev_timestep(spacing if not (spacing == 'default') else 'leading', ts, i, 1000, S)
        if sampler == 'ddpm':
            y = sch.ddpm_step(out, t, x, prev, z)
        else:
            y = sch.ddim_step(out, t, x, prev, eta, z)
        k = len(cases)
        tensors[f'step.{k}'] = y
        cases.append({'name': f'step.{k}', 'sampler': sampler, 'beta_schedule': beta, 'beta_start': bs,
                      'beta_end': be, 'prediction_type': pred, 'clip_sample': int(clip),
                      'variance_type': variance, 'eta': eta, 'set_alpha_to_one': int(one), 'steps': S,
                      'spacing': spacing, 'steps_offset': off, 'index': i, 't': t, 'prev': prev})

    preds = ('epsilon', 'sample', 'v_prediction')
    # DDPM, every training step: t = 999, 499, 0
    for variance in ('fixed_small', 'fixed_large'):
        for clip in (False, True):
            for pred in preds:
                for i in (0, 500, 999):
                    add_step('ddpm', 'linear', pred, clip, 1000, 'default', i, variance=variance)
    # DDPM with 10 steps (leading, as diffusers' set_timesteps): t = 900 -> 800 and the last step
    for i in (0, 9):
        add_step('ddpm', 'linear', 'epsilon', True, 10, 'default', i)
    # DDIM, 50 leading steps: t = 980, 480, 0
    for eta in (0.0, 0.5, 1.0):
        for clip in (False, True):
            for pred in preds:
                for one in (True, False):
                    for i in (0, 25, 49):
                        add_step('ddim', 'linear', pred, clip, 50, 'default', i, eta=eta, one=one)
    # DDIM with other schedules and spacings, including trailing / linspace where diffusers' previous
    # timestep t - T // S is not the next visited one, and the paper's uniform / quad sequences
    add_step('ddim', 'squaredcos_cap_v2', 'v_prediction', False, 37, 'trailing', 18, eta=0.5)  # 513 -> 486, not 485
    add_step('ddim', 'scaled_linear', 'epsilon', False, 37, 'trailing', 36, eta=1.0)
    add_step('ddim', 'linear', 'epsilon', True, 10, 'linspace', 1, eta=0.5)  # 888 -> 788, not 777
    add_step('ddim', 'sigmoid', 'epsilon', False, 10, 'uniform', 3, eta=0.5)
    add_step('ddim', 'quad', 'sample', True, 10, 'quad', 8, eta=1.0)
    add_step('ddim', 'quad', 'epsilon', False, 10, 'quad', 9, eta=1.0)
    add_step('ddim', 'linear', 'epsilon', False, 10, 'leading', 9, eta=1.0, one=False, off=1)

    meta = {'betas': json.dumps([{'beta_schedule': k, 'beta_start': a, 'beta_end': b} for k, a, b in BETA_CASES]),
            'timesteps': json.dumps(ts_cases), 'steps': json.dumps(cases),
            'about': 'float64 reference of diffusers DDPMScheduler / DDIMScheduler; doubles stored as hi + lo F32'}
    path = os.path.join(outdir, 'sched.safetensors')
    stio.save(path, tensors, metadata=meta)
    print(f'sched: {len(cases)} steps, {len(ts_cases)} timestep lists -> {path}')
