// attention.comp: softmax(q k^T / sqrt(d)) v per head without the score matrix: each workgroup takes
// BQ queries of one head and streams the keys in tiles of BK with an online (running-max) softmax.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

// x: lanes sharing one query, y: queries. Lane l owns channels 4l..4l+3 and 4(l+L)..4(l+L)+3 (two vec4
// accumulators, fixed so they stay in registers): the host makes 8 L >= D.
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 3) const uint D = 64;  // head dimension
layout(constant_id = 4) const uint BK = 32; // keys per tile, a multiple of L
const uint L = gl_WorkGroupSize.x;
const uint BQ = gl_WorkGroupSize.y;

layout(std430, binding = 0) buffer Act { ACT_T act[]; };

// Mirrors vk_attention_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint q_off, q_bs, k_off, k_bs, v_off, v_bs, out_off, out_bs;
    uint hw;
    float scale; // 1 / sqrt(D)
} pc;

shared float S[BQ][BK];

const float NEG_BIG = -3.0e38;

// x[c0 .. c0+3, j], zero past D (D is a multiple of 4 in every DDPM model: then no branch survives)
float ld(uint base, uint c, uint j)
{
    return c < D ? float(act[base + c * pc.hw + j]) : 0.0;
}

vec4 load4(uint base, uint c0, uint j)
{
    return vec4(ld(base, c0, j), ld(base, c0 + 1u, j), ld(base, c0 + 2u, j), ld(base, c0 + 3u, j));
}

void st(uint base, uint c, uint i, float v)
{
    if (c < D)
        act[base + c * pc.hw + i] = TO_ACT(v);
}

void store4(uint base, uint c0, uint i, vec4 v)
{
    st(base, c0, i, v.x);
    st(base, c0 + 1u, i, v.y);
    st(base, c0 + 2u, i, v.z);
    st(base, c0 + 3u, i, v.w);
}

void main()
{
    uint lane = gl_LocalInvocationID.x, ql = gl_LocalInvocationID.y;
    uint i = gl_WorkGroupID.x * BQ + ql;
    uint head = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    bool valid = i < pc.hw;
    uint hoff = head * D * pc.hw;
    uint qb = pc.q_off + b * pc.q_bs + hoff;
    uint kb = pc.k_off + b * pc.k_bs + hoff;
    uint vb = pc.v_off + b * pc.v_bs + hoff;
    uint ob = pc.out_off + b * pc.out_bs + hoff;
    uint c0 = 4u * lane, c1 = 4u * (lane + L);

    float m = NEG_BIG, l = 0.0;
    vec4 acc0 = vec4(0.0), acc1 = vec4(0.0);

    for (uint j0 = 0u; j0 < pc.hw; j0 += BK) {
        for (uint jj = lane; jj < BK; jj += L) {
            uint j = j0 + jj;
            float s = NEG_BIG;
            if (valid && j < pc.hw) {
                float d = 0.0;
                for (uint c = 0u; c < D; c++)
                    d += float(act[qb + c * pc.hw + i]) * float(act[kb + c * pc.hw + j]);
                s = d * pc.scale;
            }
            S[ql][jj] = s;
        }
        barrier();
        uint nk = min(BK, pc.hw - j0);
        float mt = m;
        for (uint jj = 0u; jj < nk; jj++)
            mt = max(mt, S[ql][jj]);
        float alpha = exp(m - mt);
        l *= alpha;
        acc0 *= alpha;
        acc1 *= alpha;
        for (uint jj = 0u; jj < nk; jj++) {
            float p = exp(S[ql][jj] - mt);
            l += p;
            uint j = j0 + jj;
            if (c0 < D)
                acc0 += p * load4(vb, c0, j);
            if (c1 < D)
                acc1 += p * load4(vb, c1, j);
        }
        m = mt;
        barrier();
    }
    if (!valid)
        return;
    float inv = 1.0 / l;
    if (c0 < D)
        store4(ob, c0, i, acc0 * inv);
    if (c1 < D)
        store4(ob, c1, i, acc1 * inv);
}
