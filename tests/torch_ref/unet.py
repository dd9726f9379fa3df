# unet.py: a plain torch.nn rebuild of diffusers' UNet2DModel (DDPM family: DownBlock2D, AttnDownBlock2D,
# UNetMidBlock2D, UpBlock2D, AttnUpBlock2D) with the same state_dict keys, and the U-Net fixtures.
#
# Written from the architecture's description (diffusers is not installed here): the module tree, the
# channel bookkeeping and the forward follow UNet2DModel so that its checkpoints load with strict=True.
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import stio

# Layers are created on this device; 'meta' counts the parameters of big configs without memory.
_DEVICE = None


def _conv(ci, co, k, stride=1, padding=0):
    return nn.Conv2d(ci, co, k, stride=stride, padding=padding, device=_DEVICE)


def _norm(groups, c, eps):
    return nn.GroupNorm(groups, c, eps=eps, affine=True, device=_DEVICE)


def timestep_embedding(t, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    """Timesteps: [sin | cos] of t * exp(-ln(max_period) i / (half - freq_shift)), i < half."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=t.dtype) / (half - freq_shift)
    arg = t[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout, device=_DEVICE)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(cout, cout, device=_DEVICE)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GN, SiLU, conv3x3, + Linear(SiLU(temb)), GN, SiLU, (dropout), conv3x3; 1x1 shortcut when the
    channel count changes; (shortcut + h) / output_scale_factor."""

    def __init__(self, cin, cout, temb, groups, eps, output_scale_factor=1.0):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = _norm(groups, cin, eps)
        self.conv1 = _conv(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout, device=_DEVICE)
        self.norm2 = _norm(groups, cout, eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = _conv(cout, cout, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = _conv(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """diffusers' Attention as the DDPM blocks use it: group_norm, to_q/to_k/to_v (Linear over channels),
    heads of dim_head channels, softmax in fp32 with scale dim_head^-0.5, to_out.0, + residual,
    / rescale_output_factor."""

    def __init__(self, c, heads, dim_head, groups, eps, rescale_output_factor=1.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = _norm(groups, c, eps)
        self.to_q = nn.Linear(c, inner, device=_DEVICE)
        self.to_k = nn.Linear(c, inner, device=_DEVICE)
        self.to_v = nn.Linear(c, inner, device=_DEVICE)
        self.to_out = nn.ModuleList([nn.Linear(inner, c, device=_DEVICE), nn.Dropout(0.0)])

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)

        def split(t):  # (B, HW, heads * d) -> (B, heads, HW, d)
            return t.view(B, H * W, self.heads, -1).permute(0, 2, 1, 3)

        q, k, v = split(self.to_q(h)), split(self.to_k(h)), split(self.to_v(h))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        # upcast_softmax: at least fp32 (the fixtures run in fp64 and stay there)
        p = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1).to(q.dtype)
        o = (p @ v).permute(0, 2, 1, 3).reshape(B, H * W, -1)
        o = self.to_out[1](self.to_out[0](o))
        o = o.transpose(1, 2).reshape(B, C, H, W)
        return (o + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """conv3x3 stride 2; padding 0 means zero-pad right and bottom by one first."""

    def __init__(self, c, padding):
        super().__init__()
        self.padding = padding
        self.conv = _conv(c, c, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode='constant', value=0)
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = _conv(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def _heads(c, head_dim):
    d = head_dim if head_dim is not None else c
    return c // d, d


class DownBlock(nn.Module):
    """DownBlock2D (attn False) / AttnDownBlock2D (attn True)."""

    def __init__(self, cin, cout, temb, layers, attn, add_downsample, cfg):
        super().__init__()
        g, eps = cfg['norm_num_groups'], cfg['norm_eps']
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if j == 0 else cout, cout, temb, g, eps) for j in range(layers)])
        if attn:
            heads, d = _heads(cout, cfg['attention_head_dim'])
            self.attentions = nn.ModuleList([Attention(cout, heads, d, g, eps) for _ in range(layers)])
        else:
            self.attentions = None
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(cout, cfg['downsample_padding'])])
        else:
            self.downsamplers = None

    def forward(self, x, temb):
        states = ()
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
            states += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states += (x,)
        return x, states


class UpBlock(nn.Module):
    """UpBlock2D / AttnUpBlock2D: layers resnets, resnet j reads cat(hidden, skip); the skip of the last
    one has in_channels (the next level's output), the others out_channels."""

    def __init__(self, cin, prev_out, cout, temb, layers, attn, add_upsample, cfg):
        super().__init__()
        g, eps = cfg['norm_num_groups'], cfg['norm_eps']
        resnets = []
        for j in range(layers):
            res_skip = cin if j == layers - 1 else cout
            res_in = prev_out if j == 0 else cout
            resnets.append(ResnetBlock2D(res_in + res_skip, cout, temb, g, eps))
        self.resnets = nn.ModuleList(resnets)
        if attn:
            heads, d = _heads(cout, cfg['attention_head_dim'])
            self.attentions = nn.ModuleList([Attention(cout, heads, d, g, eps) for _ in range(layers)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def forward(self, x, skips, temb):
        for j, resnet in enumerate(self.resnets):
            skip, skips = skips[-1], skips[:-1]
            x = resnet(torch.cat([x, skip], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2D(nn.Module):
    def __init__(self, c, temb, cfg):
        super().__init__()
        g, eps, osf = cfg['norm_num_groups'], cfg['norm_eps'], cfg['mid_block_scale_factor']
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, g, eps, osf) for _ in range(2)])
        if cfg['add_attention']:
            heads, d = _heads(c, cfg['attention_head_dim'])
            self.attentions = nn.ModuleList([Attention(c, heads, d, g, eps, osf)])
        else:
            self.attentions = None

    def forward(self, x, temb):
        x = self.resnets[0](x, temb)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb)


class UNet2DModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ch = list(cfg['block_out_channels'])
        n = len(ch)
        layers = cfg['layers_per_block']
        g, eps = cfg['norm_num_groups'], cfg['norm_eps']
        temb = 4 * ch[0]
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.conv_in = _conv(cfg['in_channels'], ch[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, kind in enumerate(cfg['down_block_types']):
            cin, out = out, ch[i]
            self.down_blocks.append(
                DownBlock(cin, out, temb, layers, kind == 'AttnDownBlock2D', i < n - 1, cfg))

        self.mid_block = UNetMidBlock2D(ch[-1], temb, cfg)

        self.up_blocks = nn.ModuleList()
        rev = ch[::-1]
        out = rev[0]
        for i, kind in enumerate(cfg['up_block_types']):
            prev_out, out = out, rev[i]
            cin = rev[min(i + 1, n - 1)]
            self.up_blocks.append(
                UpBlock(cin, prev_out, out, temb, layers + 1, kind == 'AttnUpBlock2D', i < n - 1, cfg))

        self.conv_norm_out = _norm(g, ch[0], eps)
        self.conv_act = nn.SiLU()
        self.conv_out = _conv(ch[0], cfg['out_channels'], 3, padding=1)

    def forward(self, x, t):
        t = t.to(x.dtype).expand(x.shape[0])
        emb = timestep_embedding(t, self.cfg['block_out_channels'][0], self.cfg['flip_sin_to_cos'],
                                 self.cfg['freq_shift'])
        emb = self.time_embedding(emb)
        x = self.conv_in(x)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb)
            skips += states
        x = self.mid_block(x, emb)
        for block in self.up_blocks:
            k = len(block.resnets)
            x = block(x, skips[-k:], emb)
            skips = skips[:-k]
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


# ---- configs ----------------------------------------------------------------------------------------

def unet_config(**kw):
    """A diffusers UNet2DModel config.json dict (defaults: google/ddpm-cifar10-32)."""
    cfg = {
        '_class_name': 'UNet2DModel',
        '_diffusers_version': '0.21.4',
        'act_fn': 'silu',
        'add_attention': True,
        'attention_head_dim': None,
        'block_out_channels': [128, 256, 256, 256],
        'center_input_sample': False,
        'down_block_types': ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
        'downsample_padding': 0,
        'flip_sin_to_cos': False,
        'freq_shift': 1,
        'in_channels': 3,
        'layers_per_block': 2,
        'mid_block_scale_factor': 1,
        'norm_eps': 1e-06,
        'norm_num_groups': 32,
        'out_channels': 3,
        'resnet_time_scale_shift': 'default',
        'sample_size': 32,
        'time_embedding_type': 'positional',
        'up_block_types': ['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
    }
    cfg.update(kw)
    return cfg


SCHEDULER = {
    '_class_name': 'DDPMScheduler',
    '_diffusers_version': '0.21.4',
    'beta_end': 0.02,
    'beta_schedule': 'linear',
    'beta_start': 0.0001,
    'clip_sample': True,
    'num_train_timesteps': 1000,
    'prediction_type': 'epsilon',
    'trained_betas': None,
    'variance_type': 'fixed_small',
}

TINY = {
    # DDPM-like: attention at level 1 (down and up), mid attention, TF-SAME downsampling
    'a': unet_config(in_channels=3, out_channels=3, sample_size=16, block_out_channels=[8, 16, 16],
                     layers_per_block=1,
                     down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'],
                     up_block_types=['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
                     downsample_padding=0, norm_num_groups=4, norm_eps=1e-6, freq_shift=1,
                     flip_sin_to_cos=False, attention_head_dim=None),
    # no attention anywhere, symmetric padding, flipped embedding, mid-block scale != 1
    'b': unet_config(in_channels=1, out_channels=1, sample_size=12, block_out_channels=[8, 12],
                     layers_per_block=2, down_block_types=['DownBlock2D', 'DownBlock2D'],
                     up_block_types=['UpBlock2D', 'UpBlock2D'], add_attention=False,
                     downsample_padding=1, norm_num_groups=2, norm_eps=1e-5, freq_shift=0,
                     flip_sin_to_cos=True, mid_block_scale_factor=1.4),
    # several heads (head dim 4), channels going down again at the last level, attention at different
    # down / up positions, mid attention with scale sqrt(2)
    'c': unet_config(in_channels=4, out_channels=2, sample_size=8, block_out_channels=[8, 16, 8],
                     layers_per_block=1,
                     down_block_types=['AttnDownBlock2D', 'DownBlock2D', 'AttnDownBlock2D'],
                     up_block_types=['UpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D'],
                     attention_head_dim=4, downsample_padding=1, norm_num_groups=4, norm_eps=1e-5,
                     freq_shift=1, flip_sin_to_cos=True, mid_block_scale_factor=2 ** 0.5),
    # a single level: no down- or upsampling (norm_num_groups < channels: with one group per channel,
    # norm2 would erase the time embedding)
    'd': unet_config(in_channels=1, out_channels=1, sample_size=4, block_out_channels=[8],
                     layers_per_block=1, down_block_types=['AttnDownBlock2D'],
                     up_block_types=['AttnUpBlock2D'], add_attention=False, norm_num_groups=2),
}

BIG = {
    'cifar10': unet_config(),  # google/ddpm-cifar10-32
    'celebahq': unet_config(  # google/ddpm-celebahq-256 (also ddpm-church/bedroom/cat-256)
        sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
        down_block_types=['DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D',
                          'DownBlock2D'],
        up_block_types=['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D']),
}


def module_counts(model):
    """How many of each layer kind the model holds (graph nodes carrying weights map onto these)."""
    counts = {'Conv2d': 0, 'Linear': 0, 'GroupNorm': 0, 'Attention': 0, 'Upsample2D': 0}
    for m in model.modules():
        for kind in counts:
            if type(m).__name__ == kind:
                counts[kind] += 1
    return counts


def randomize(model, gen):
    """Every weight random and non-trivial: GN gamma 1 + N(0, 0.3), beta N(0, 0.3), conv/linear weights
    N(0, 1/fan_in), biases N(0, 0.1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def make(outdir):
    global _DEVICE
    gen = torch.Generator().manual_seed(20240611)
    for name, cfg in TINY.items():
        model = UNet2DModel(cfg)
        randomize(model, gen)
        meta = {'ddpm.config': json.dumps(cfg, indent=2, sort_keys=True),
                'ddpm.scheduler': json.dumps(SCHEDULER, indent=2, sort_keys=True),
                'format': 'ddpm-vk'}
        stio.save(os.path.join(outdir, f'unet_{name}.safetensors'), model.state_dict(), meta)
        S = cfg['sample_size']
        x = torch.randn((2, cfg['in_channels'], S, S), generator=gen)
        t = torch.tensor([3.0, 917.0])
        with torch.no_grad():  # the reference in float64: closer to the exact result than any fp32 code
            out = model.double()(x.double(), t.double()).float()
        io_meta = {'params': str(n_params(model)), 'modules': json.dumps(module_counts(model))}
        stio.save(os.path.join(outdir, f'unet_{name}_io.safetensors'), {'x': x, 't': t, 'out': out}, io_meta)
        print(f'unet_{name}: {n_params(model)} params, out std {out.std().item():.3f}')

    # parameter counts of the real DDPM configs, built on the meta device (no weights)
    _DEVICE = 'meta'
    meta = {}
    try:
        for name, cfg in BIG.items():
            model = UNet2DModel(cfg)
            meta[f'{name}.config'] = json.dumps(cfg, sort_keys=True)
            meta[f'{name}.params'] = str(n_params(model))
            meta[f'{name}.modules'] = json.dumps(module_counts(model))
            print(f'{name}: {n_params(model)} params')
    finally:
        _DEVICE = None
    stio.save(os.path.join(outdir, 'unet_counts.safetensors'), {'unused': torch.zeros(1)}, meta)
