// attention.comp: softmax(q k^T / sqrt(d)) v per head without the score matrix: each workgroup takes
// BQ queries of one head and streams the keys in tiles of BK with an online (running-max) softmax.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

// x: lanes sharing one query (each owns channels lane, lane + L, ...), y: queries.
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 3) const uint D = 64;  // head dimension
layout(constant_id = 4) const uint BK = 32; // keys per tile
const uint L = gl_WorkGroupSize.x;
const uint BQ = gl_WorkGroupSize.y;
const uint DL = (D + L - 1u) / L; // channels per lane

layout(std430, binding = 0) buffer Act { ACT_T act[]; };

// Mirrors vk_attention_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint q_off, q_bs, k_off, k_bs, v_off, v_bs, out_off, out_bs;
    uint hw;
    float scale; // 1 / sqrt(D)
} pc;

shared float S[BQ][BK];

const float NEG_BIG = -3.0e38;

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

    float m = NEG_BIG, l = 0.0;
    float acc[DL];
    for (uint r = 0u; r < DL; r++)
        acc[r] = 0.0;

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
        for (uint r = 0u; r < DL; r++)
            acc[r] *= alpha;
        for (uint jj = 0u; jj < nk; jj++) {
            float p = exp(S[ql][jj] - mt);
            l += p;
            uint j = j0 + jj;
            for (uint r = 0u; r < DL; r++) {
                uint c = lane + r * L;
                if (c < D)
                    acc[r] += p * float(act[vb + c * pc.hw + j]);
            }
        }
        m = mt;
        barrier();
    }
    if (!valid)
        return;
    float inv = 1.0 / l;
    for (uint r = 0u; r < DL; r++) {
        uint c = lane + r * L;
        if (c < D)
            act[ob + c * pc.hw + i] = TO_ACT(acc[r] * inv);
    }
}
