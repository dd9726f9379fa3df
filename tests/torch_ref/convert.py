# convert.py: fixtures for ddpm-convert: reduced-width DDPM U-Nets (the block structure of
# google/ddpm-cifar10-32 and of the 256x256 google/ddpm-* models) saved in the layouts found in the wild.
#
# Layouts: a diffusers pipeline folder (unet/ + scheduler/ + model_index.json, safetensors), a flat
# diffusers folder (config.json + diffusion_pytorch_model.bin + scheduler_config.json), single files with
# the old attention names (query/key/value/proj_attn), and the original DDPM PyTorch port used by the DDIM
# code (temb.dense, down.I.block.J, mid.attn_1, up.I ...), built here as its own module tree (OrigModel)
# so that its key names come from torch, not from a renaming table. F32, F16 and BF16. Each layout's
# torch output for fixed inputs is in convert_io.safetensors (float64 forward of the weights as stored).
import json
import math
import os
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

import stio
import unet

# ---- the original DDPM port's module tree (pesser/pytorch_diffusion, ermongroup/ddim) ---------------
# Written from the architecture's description: ResnetBlock(norm1, conv1, temb_proj, norm2, conv2,
# nin_shortcut), AttnBlock(norm, q, k, v, proj_out as 1x1 convs), Downsample(conv, pad right/bottom),
# Upsample(nearest, conv); `up` is filled from the lowest resolution and prepended, so up[i] is level i.


def _gn(c, groups):
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class OrigResnet(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = _gn(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = _gn(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class OrigAttn(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = _gn(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).permute(0, 2, 1)  # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)  # (B, C, HW)
        w = torch.bmm(q, k) * (C ** -0.5)  # (B, HW query, HW key)
        w = w.softmax(dim=2)
        v = self.v(h).reshape(B, C, H * W)
        o = torch.bmm(v, w.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj_out(o)


class OrigModel(nn.Module):
    """ch, ch_mult, num_res_blocks, attn_resolutions, resolution as in the DDIM code's yaml configs."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, groups, cin=3, cout=3):
        super().__init__()
        self.ch, self.levels, self.nrb = ch, len(ch_mult), num_res_blocks
        temb = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(cin, ch, 3, padding=1)
        res = resolution
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i in range(self.levels):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            bin_, bout = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                blocks.append(OrigResnet(bin_, bout, temb, groups))
                bin_ = bout
                if res in attn_resolutions:
                    attns.append(OrigAttn(bin_, groups))
            d = nn.Module()
            d.block, d.attn = blocks, attns
            if i != self.levels - 1:
                d.downsample = nn.Module()
                d.downsample.conv = nn.Conv2d(bin_, bin_, 3, stride=2, padding=0)
                res //= 2
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1 = OrigResnet(bin_, bin_, temb, groups)
        self.mid.attn_1 = OrigAttn(bin_, groups)
        self.mid.block_2 = OrigResnet(bin_, bin_, temb, groups)
        ups = []
        for i in reversed(range(self.levels)):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            bout, skip = ch * ch_mult[i], ch * ch_mult[i]
            for j in range(num_res_blocks + 1):
                if j == num_res_blocks:
                    skip = ch * in_mult[i]
                blocks.append(OrigResnet(bin_ + skip, bout, temb, groups))
                bin_ = bout
                if res in attn_resolutions:
                    attns.append(OrigAttn(bin_, groups))
            u = nn.Module()
            u.block, u.attn = blocks, attns
            if i != 0:
                u.upsample = nn.Module()
                u.upsample.conv = nn.Conv2d(bin_, bin_, 3, padding=1)
                res *= 2
            ups.insert(0, u)
        self.up = nn.ModuleList(ups)
        self.norm_out = _gn(bin_, groups)
        self.conv_out = nn.Conv2d(bin_, cout, 3, padding=1)

    def forward(self, x, t):
        half = self.ch // 2
        f = torch.exp(torch.arange(half, dtype=x.dtype) * -(math.log(10000) / (half - 1)))
        e = t.to(x.dtype)[:, None] * f[None, :]
        temb = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))
        hs = [self.conv_in(x)]
        for i in range(self.levels):
            for j in range(self.nrb):
                h = self.down[i].block[j](hs[-1], temb)
                if len(self.down[i].attn) > 0:
                    h = self.down[i].attn[j](h)
                hs.append(h)
            if i != self.levels - 1:
                hs.append(self.down[i].downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.levels)):
            for j in range(self.nrb + 1):
                h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i].attn) > 0:
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample.conv(F.interpolate(h, scale_factor=2.0, mode='nearest'))
        return self.conv_out(F.silu(self.norm_out(h)))


# ---- configs ---------------------------------------------------------------------------------------

# google/ddpm-cifar10-32: levels 1,2,2,2 x ch, attention at 16x16 (level 1), 2 resnets per level;
# here ch 4 (groups 2) at 16 x 16
CIFAR = unet.unet_config(block_out_channels=[4, 8, 8, 8], norm_num_groups=2, sample_size=16)
CIFAR_ORIG = dict(ch=4, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,), resolution=16,
                  groups=2)
# google/ddpm-celebahq-256 / church / bedroom / cat: levels 1,1,2,2,4,4 x ch, attention at 16x16
# (level 4); here ch 4 at 32 x 32 (attention at 2 x 2)
CELEBA = dict(unet.BIG['celebahq'], block_out_channels=[4, 4, 4, 4, 8, 8], norm_num_groups=2,
              sample_size=32)
CELEBA_ORIG = dict(ch=4, ch_mult=(1, 1, 1, 1, 2, 2), num_res_blocks=2, attn_resolutions=(2,), resolution=32,
                   groups=2)

# the real scheduler config of google/ddpm-cifar10-32 and the 256 models
SCHED_DDPM = {'_class_name': 'DDPMScheduler', '_diffusers_version': '0.1.1', 'beta_end': 0.02,
              'beta_schedule': 'linear', 'beta_start': 0.0001, 'clip_sample': True,
              'num_train_timesteps': 1000, 'trained_betas': None, 'variance_type': 'fixed_small'}
# a different one, to see that the converter adopts what it finds
SCHED_OTHER = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'clip_sample': False,
               'num_train_timesteps': 500, 'variance_type': 'fixed_large', 'prediction_type': 'v_prediction'}

OLD_ATTN = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}


def old_names(sd):
    out = {}
    for k, v in sd.items():
        for new, old in OLD_ATTN.items():
            k = k.replace(f'.{new}.', f'.{old}.')
        out[k] = v
    return out


def cast(sd, dtype):
    return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}


def ref_forward(model, sd, x, t):
    """The float64 forward of `model` with the weights `sd` as stored (rounded to their dtype)."""
    model.load_state_dict({k: v.double() for k, v in cast(sd, torch.float64).items()})
    with torch.no_grad():
        return model.double()(x.double(), t.double()).float()


def randomize(model, gen):
    unet.randomize(model, gen)  # GN gamma 1 + N(0, .3), beta N(0, .3); weights N(0, 1/fan_in); biases N(0, .1)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write('\n')


class _Evil:
    """Unpickling this calls os.system: the converter must refuse it without running anything."""

    def __reduce__(self):
        return (os.system, ('echo ddpm-convert-ran-a-pickle > ddpm_pwned.txt',))


def make(outdir):
    d = os.path.join(outdir, 'convert')
    os.makedirs(d, exist_ok=True)
    gen = torch.Generator().manual_seed(5)
    io = {}
    t = torch.tensor([17.0, 941.0])
    io['t'] = t
    x = {'cifar': torch.randn((2, 3, 16, 16), generator=gen), 'celeba': torch.randn((2, 3, 32, 32), generator=gen)}
    io['x_cifar'], io['x_celeba'] = x['cifar'], x['celeba']

    # diffusers-layout models
    cifar = unet.UNet2DModel(CIFAR)
    randomize(cifar, gen)
    celeba = unet.UNet2DModel(CELEBA)
    randomize(celeba, gen)
    sd_cifar, sd_celeba = cifar.state_dict(), celeba.state_dict()

    # 1. pipeline folder, safetensors F32, the real scheduler
    p = os.path.join(d, 'cifar_pipeline')
    write_json(os.path.join(p, 'model_index.json'),
               {'_class_name': 'DDPMPipeline', '_diffusers_version': '0.1.1',
                'scheduler': ['diffusers', 'DDPMScheduler'], 'unet': ['diffusers', 'UNet2DModel']})
    write_json(os.path.join(p, 'unet', 'config.json'), CIFAR)
    write_json(os.path.join(p, 'scheduler', 'scheduler_config.json'), SCHED_DDPM)
    stio.save(os.path.join(p, 'unet', 'diffusion_pytorch_model.safetensors'), sd_cifar)
    io['out_cifar_pipeline'] = ref_forward(cifar, sd_cifar, x['cifar'], t)

    # 2. flat folder, torch.save .bin F16, another scheduler beside it
    p = os.path.join(d, 'cifar_flat')
    write_json(os.path.join(p, 'config.json'), CIFAR)
    write_json(os.path.join(p, 'scheduler_config.json'), SCHED_OTHER)
    sd16 = cast(sd_cifar, torch.float16)
    torch.save(sd16, os.path.join(p, 'diffusion_pytorch_model.bin'))
    io['out_cifar_flat'] = ref_forward(cifar, sd16, x['cifar'], t)

    # 3. single safetensors F16 file, old attention names (--config cifar_pipeline/unet/config.json)
    stio.save(os.path.join(d, 'cifar_old_attn.safetensors'), old_names(sd_cifar), dtype='F16')
    io['out_cifar_old_attn'] = ref_forward(cifar, sd16, x['cifar'], t)

    # 4. the original port, CIFAR-10 structure, torch.save .ckpt F32 (DataParallel "module." keys)
    orig = OrigModel(**CIFAR_ORIG)
    randomize(orig, gen)
    sd_orig = orig.state_dict()
    torch.save({f'module.{k}': v for k, v in sd_orig.items()}, os.path.join(d, 'cifar_orig.ckpt'))
    io['out_cifar_orig'] = ref_forward(orig, sd_orig, x['cifar'], t)
    # the same weights in F16 and torch.save's legacy (pre-1.6, not zip) format, as older ports were saved
    sd16 = cast(sd_orig, torch.float16)
    torch.save(sd16, os.path.join(d, 'cifar_orig_legacy_f16.ckpt'), _use_new_zipfile_serialization=False)
    io['out_cifar_orig_legacy_f16'] = ref_forward(orig, sd16, x['cifar'], t)

    # 5. the 256 structure: pipeline with unet/ given directly (scheduler found in ../scheduler), .bin F16
    p = os.path.join(d, 'celeba_pipeline')
    write_json(os.path.join(p, 'model_index.json'),
               {'_class_name': 'DDPMPipeline', 'scheduler': ['diffusers', 'DDPMScheduler'],
                'unet': ['diffusers', 'UNet2DModel']})
    write_json(os.path.join(p, 'unet', 'config.json'), CELEBA)
    write_json(os.path.join(p, 'scheduler', 'scheduler_config.json'), SCHED_DDPM)
    sd16 = cast(sd_celeba, torch.float16)
    torch.save(sd16, os.path.join(p, 'unet', 'diffusion_pytorch_model.bin'))
    io['out_celeba_pipeline'] = ref_forward(celeba, sd16, x['celeba'], t)

    # 6. the original port, 256 structure, torch.save .pt BF16 (--config celeba_pipeline/unet/config.json)
    orig = OrigModel(**CELEBA_ORIG)
    randomize(orig, gen)
    sdbf = cast(orig.state_dict(), torch.bfloat16)
    torch.save(sdbf, os.path.join(d, 'celeba_orig_bf16.pt'))
    io['out_celeba_orig_bf16'] = ref_forward(orig, sdbf, x['celeba'], t)

    # 7. a single diffusers safetensors file in BF16 with the old attention names
    sdbf = cast(sd_celeba, torch.bfloat16)
    stio.save(os.path.join(d, 'celeba_old_attn_bf16.safetensors'), old_names(sd_celeba), dtype='BF16')
    io['out_celeba_old_attn_bf16'] = ref_forward(celeba, sdbf, x['celeba'], t)

    # hostile inputs: a config whose shapes disagree with the weights; a pickle calling os.system
    write_json(os.path.join(d, 'bad_shape_config.json'), dict(CIFAR, in_channels=1))
    torch.save({'conv_in.weight': torch.zeros(2), 'x': _Evil()}, os.path.join(d, 'evil_system.bin'))
    with zipfile.ZipFile(os.path.join(d, 'evil_system.bin')) as z:  # the pickle really names os.system
        pkl = [n for n in z.namelist() if n.endswith('data.pkl')][0]
        assert b'system' in z.read(pkl), 'evil pickle lacks the os.system global'

    # a storage shorter than its tensor claims (the zip rebuilt with data/0 cut to 8 of its 24 bytes), and
    # a central-directory entry pointing outside the archive
    small = os.path.join(d, 'evil_short_storage.bin')
    torch.save({'conv_in.weight': torch.ones(2, 3, 1, 1)}, small)
    with zipfile.ZipFile(small) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(small, 'w', zipfile.ZIP_STORED) as z:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            z.writestr(fixed, data[:8] if info.filename.endswith('/data/0') else data)
    far = os.path.join(d, 'evil_offset.bin')
    torch.save({'conv_in.weight': torch.ones(2, 3, 1, 1)}, far)
    raw = bytearray(open(far, 'rb').read())
    cd = raw.index(b'PK\x01\x02')  # first central-directory entry: local header offset at +42
    raw[cd + 42:cd + 46] = (0x7FFFFFF0).to_bytes(4, 'little')
    open(far, 'wb').write(bytes(raw))

    # wrappers around state dicts (tiny, for --inspect / --select): the DDIM code's
    # [model, optimizer, epoch, step, ema] list and a {"state_dict": {"module.<key>": ...}} dict
    w = {'conv_in.weight': torch.arange(6, dtype=torch.float32).reshape(2, 3, 1, 1)}
    torch.save([w, {'state': {}, 'param_groups': [{'lr': 2e-4}]}, 7, 5000, {k: v + 1 for k, v in w.items()}],
               os.path.join(d, 'ddim_list.ckpt'))
    torch.save({'state_dict': {f'module.{k}': v for k, v in w.items()}, 'epoch': 3},
               os.path.join(d, 'wrapped.pt'))

    stio.save(os.path.join(outdir, 'convert_io.safetensors'), io,
              {'layouts': json.dumps(sorted(k[4:] for k in io if k.startswith('out_')))})
    for k in sorted(io):
        if k.startswith('out_'):
            print(f'convert {k[4:]}: out std {io[k].std().item():.3f}')
