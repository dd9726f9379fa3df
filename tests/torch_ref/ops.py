# ops.py: PyTorch references for every CPU op (time_embed, linear, silu, conv2d, groupnorm, attention,
# upsample, concat) on deliberately odd shapes, written to tests/fixtures/ops.safetensors.
#
# Each case <name> stores its tensors as "<name>.<role>" (x, w, b, temb, res, out, ...) and one metadata
# entry "case.<name>" = "<op> <int/float parameters...>" in the order tests/test_cpu_ops.c reads them.
import math
import os

import torch
import torch.nn.functional as F

import stio


def timestep_embedding(t, dim, freq_shift, flip, max_period=10000):
    """diffusers' get_timestep_embedding, rewritten: float32 throughout like the original."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32)
    exponent = exponent / (half - freq_shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def attention(q, k, v, heads):
    """softmax(q^T k / sqrt(d)) v per head over (B, C, HW) tensors; head h owns channels h*d..h*d+d-1."""
    B, C, HW = q.shape
    d = C // heads

    def split(x):  # (B, C, HW) -> (B, heads, HW, d)
        return x.reshape(B, heads, d, HW).transpose(2, 3)

    qh, kh, vh = split(q), split(k), split(v)
    scores = torch.matmul(qh, kh.transpose(2, 3)) / math.sqrt(d)
    p = torch.softmax(scores, dim=-1)
    o = torch.matmul(p, vh)  # (B, heads, HW, d)
    return o.transpose(2, 3).reshape(B, C, HW)


def make(outdir):
    T, meta = {}, {}

    def case(name, spec, **tensors):
        meta['case.' + name] = spec
        for role, t in tensors.items():
            T[f'{name}.{role}'] = t.detach().float().contiguous()

    # ---- time_embed: t = 0, 1, 999 and fractional; shift 0/1, flip on/off, odd and even C
    t = torch.tensor([0.0, 1.0, 999.0, 0.5, 123.75, 500.0])
    for C, shift, flip in [(32, 1, 0), (7, 0, 1), (8, 0, 0), (13, 1, 1), (128, 1, 0), (1, 0, 0)]:
        case(f'te_C{C}_s{shift}_f{flip}', f'time_embed {len(t)} {C} {shift} {flip}', t=t,
             out=timestep_embedding(t, C, shift, flip))

    # ---- linear
    for B, K, M in [(1, 13, 7), (3, 32, 128), (3, 1, 1)]:
        x, w, b = torch.randn(B, K), torch.randn(M, K) / math.sqrt(K), torch.randn(M)
        case(f'linear_{B}_{K}_{M}', f'linear {B} {K} {M}', x=x, w=w, b=b, out=F.linear(x, w, b))

    # ---- silu, including saturated inputs
    x = torch.cat([torch.randn(3 * 13 * 7) * 4, torch.tensor([0.0, -90.0, 90.0, -20.0, 20.0, 1e-8])])
    case('silu', f'silu {x.numel()}', x=x, out=F.silu(x))

    # ---- conv2d: name, B, Ci, H, W, Co, k, stride, (pt, pl, pb, pr), temb, res, scale, bias, 2-D weight
    convs = [
        ('conv3_p1', 1, 3, 7, 7, 13, 3, 1, (1, 1, 1, 1), 0, 0, 1.0, 1, 0),
        ('conv3_5x9', 3, 13, 5, 9, 5, 3, 1, (1, 1, 1, 1), 0, 0, 1.0, 1, 0),
        ('conv3_1x1img', 1, 4, 1, 1, 3, 3, 1, (1, 1, 1, 1), 0, 0, 1.0, 1, 0),
        ('conv3_c1', 3, 1, 7, 7, 1, 3, 1, (1, 1, 1, 1), 0, 0, 1.0, 1, 0),
        # downsample_padding = 0: pad right / bottom by one, then no padding
        ('conv3_s2_p0', 3, 5, 8, 8, 7, 3, 2, (0, 0, 1, 1), 0, 0, 1.0, 1, 0),
        # downsample_padding = 1: symmetric
        ('conv3_s2_p1', 1, 5, 8, 8, 7, 3, 2, (1, 1, 1, 1), 0, 0, 1.0, 1, 0),
        ('conv1_w2d', 3, 13, 5, 9, 6, 1, 1, (0, 0, 0, 0), 0, 0, 1.0, 1, 1),
        ('conv3_temb_res', 3, 6, 7, 7, 13, 3, 1, (1, 1, 1, 1), 1, 1, 0.5, 1, 0),
        ('conv1_res_nobias', 1, 13, 7, 7, 3, 1, 1, (0, 0, 0, 0), 0, 1, 1.0, 0, 0),
        # several channel panels and pixel chunks
        ('conv3_16_20_9x9', 2, 16, 9, 9, 20, 3, 1, (1, 1, 1, 1), 1, 0, 1.0, 1, 0),
    ]
    for name, B, Ci, H, W, Co, k, s, (pt, pl, pb, pr), has_temb, has_res, scale, has_bias, w2d in convs:
        x = torch.randn(B, Ci, H, W)
        w = torch.randn(Co, Ci, k, k) / math.sqrt(Ci * k * k)
        b = torch.randn(Co) if has_bias else None
        y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=s)
        tensors = dict(x=x, w=w.reshape(Co, Ci) if w2d else w)
        if has_bias:
            tensors['b'] = b
        if has_temb:
            temb = torch.randn(B, Co)
            tensors['temb'] = temb
            y = y + temb[:, :, None, None]
        if has_res:
            res = torch.randn_like(y)
            tensors['res'] = res
            y = y + res
        y = y * scale
        case(name, f'conv2d {B} {Ci} {H} {W} {Co} {k} {s} {pt} {pl} {pb} {pr} {has_temb} {has_res} '
             f'{has_bias} {scale!r}', out=y, **tensors)

    # ---- groupnorm: name, B, C, H, W, groups, eps, silu, offset (a large mean tests the statistics)
    gns = [
        ('gn_c1_g1', 1, 1, 7, 7, 1, 1e-6, 0, 0.0),
        ('gn_c3_g1', 3, 3, 5, 9, 1, 1e-5, 1, 0.0),
        ('gn_c13_g13', 2, 13, 7, 7, 13, 1e-6, 0, 0.0),
        ('gn_c26_g13_silu', 1, 26, 5, 9, 13, 1e-6, 1, 0.0),
        ('gn_c13_1x1', 3, 13, 1, 1, 13, 1e-6, 0, 0.0),
        ('gn_c26_offset', 1, 26, 7, 7, 13, 1e-6, 1, 50.0),
    ]
    for name, B, C, H, W, G, eps, silu, offset in gns:
        x = torch.randn(B, C, H, W) * 2 + offset
        g, be = 1 + 0.5 * torch.randn(C), torch.randn(C)
        # float64: a one-element group (var 0, rstd = 1/sqrt(eps) = 1000) amplifies fp32 rounding, in
        # torch's own fp32 kernel too; the exact value there is beta.
        y = F.group_norm(x.double(), G, g.double(), be.double(), eps).float()
        if silu:
            y = F.silu(y)
        case(name, f'groupnorm {B} {C} {H * W} {G} {eps!r} {silu}', x=x, gamma=g, beta=be, out=y)

    # ---- attention: name, B, C, HW, heads, q scale (large: a peaked softmax)
    atts = [
        ('attn_c4_hw1_h1', 1, 4, 1, 1, 1.0),
        ('attn_c6_hw49_h2', 3, 6, 49, 2, 1.0),
        ('attn_c6_hw49_h1', 1, 6, 49, 1, 1.0),
        ('attn_c4_hw49_h2_peak', 1, 4, 49, 2, 6.0),
        ('attn_c4_hw1_h2', 3, 4, 1, 2, 1.0),
        # scores in the hundreds: exp overflows float32 unless the row maximum is subtracted first
        ('attn_c4_hw49_h1_huge', 1, 4, 49, 1, 60.0),
        # more than 64 query rows: the CPU forward takes them in blocks (44, 44, 43; 4 x 49)
        ('attn_c6_hw131_h2', 2, 6, 131, 2, 1.0),
        ('attn_c8_hw196_h1', 1, 8, 196, 1, 3.0),
    ]
    for name, B, C, HW, heads, qs in atts:
        q, k, v = torch.randn(B, C, HW) * qs, torch.randn(B, C, HW), torch.randn(B, C, HW)
        case(name, f'attention {B} {C} {HW} {heads}', q=q, k=k, v=v, out=attention(q, k, v, heads))

    # ---- upsample nearest x2
    for B, C, H, W in [(1, 1, 1, 1), (3, 5, 5, 9), (1, 13, 7, 7)]:
        x = torch.randn(B, C, H, W)
        case(f'up_{B}_{C}_{H}x{W}', f'upsample {B} {C} {H} {W}', x=x,
             out=F.interpolate(x, scale_factor=2.0, mode='nearest'))

    # ---- concat along channels
    for B, Ca, Cb, H, W in [(3, 13, 3, 3, 5), (1, 1, 1, 1, 1)]:
        a, b = torch.randn(B, Ca, H, W), torch.randn(B, Cb, H, W)
        case(f'cat_{B}_{Ca}_{Cb}', f'concat {B} {Ca} {Cb} {H * W}', a=a, b=b, out=torch.cat([a, b], dim=1))

    path = os.path.join(outdir, 'ops.safetensors')
    stio.save(path, T, metadata=meta)
    print(f'{path}: {len(meta)} cases, {len(T)} tensors, {os.path.getsize(path)} bytes')
