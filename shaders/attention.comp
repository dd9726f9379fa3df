// attention.comp: softmax(q k^T / sqrt(d)) v per head without the score matrix: each workgroup takes
// 4 queries of one head and streams the keys in tiles of L (one key per invocation) with an online
// (running-max) softmax; only a 4 x L tile of scores ever exists, in shared memory.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "shared.h"
#include "tensor.glsl"

// L invocations: for the scores, invocation l takes key j0 + l; for the output, channels l, l + L, ...
// (at most 8 per invocation: the host makes 8 L >= D). The 4 queries' loads are the same for every
// invocation (uniform), so each key or value load feeds 4 FMAs.
layout(local_size_x_id = 0) in;
layout(constant_id = 3) const uint D = 64; // head dimension
const uint L = gl_WorkGroupSize.x;
#define QB 4u   // queries per workgroup
#define MAXC 8u // channels per invocation

layout(std430, binding = 0) buffer Act { ACT_T act[]; };   // q, k, v (one buffer)
layout(std430, binding = 1) buffer Out { ACT_T outp[]; }; // the output's activation buffer

// Mirrors vk_attention_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint q_off, q_bs, k_off, k_bs, v_off, v_bs, out_off, out_bs;
    uint hw;
    float scale; // 1 / sqrt(D)
} pc;

shared float S[QB][L]; // scores of the tile
shared float P[QB][L]; // their exp(score - running max)

const float NEG_BIG = -3.0e38;

void main()
{
    KEEP_READ_WRITE(pc.hw == 0u, act, outp)
    uint lane = gl_LocalInvocationID.x;
    uint i0 = gl_WorkGroupID.x * QB;
    uint head = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    uint hoff = head * D * pc.hw;
    uint qb = pc.q_off + b * pc.q_bs + hoff;
    uint kb = pc.k_off + b * pc.k_bs + hoff;
    uint vb = pc.v_off + b * pc.v_bs + hoff;
    uint ob = pc.out_off + b * pc.out_bs + hoff;
    uint last = pc.hw - 1u;
    uint qi0 = min(i0, last), qi1 = min(i0 + 1u, last), qi2 = min(i0 + 2u, last), qi3 = min(i0 + 3u, last);

    vec4 m = vec4(NEG_BIG), l = vec4(0.0); // per query: running max and normaliser
    vec4 acc[MAXC];                          // acc[r][q]: channel lane + r L of query i0 + q
    [[unroll]] for (uint r = 0u; r < MAXC; r++)
        acc[r] = vec4(0.0);

    for (uint j0 = 0u; j0 < pc.hw; j0 += L) {
        uint j = j0 + lane;
        uint jc = min(j, last);
        vec4 s = vec4(0.0);
        for (uint c = 0u; c < D; c++) {
            uint row = c * pc.hw;
            float kv = float(act[kb + row + jc]);
            s += kv * vec4(float(act[qb + row + qi0]), float(act[qb + row + qi1]), float(act[qb + row + qi2]),
                           float(act[qb + row + qi3]));
        }
        s = j < pc.hw ? s * pc.scale : vec4(NEG_BIG);
        S[0][lane] = s.x;
        S[1][lane] = s.y;
        S[2][lane] = s.z;
        S[3][lane] = s.w;
        barrier();
        vec4 mt = m;
        for (uint jj = 0u; jj < L; jj++)
            mt = max(mt, vec4(S[0][jj], S[1][jj], S[2][jj], S[3][jj]));
        vec4 p = exp(s - mt);
        P[0][lane] = p.x;
        P[1][lane] = p.y;
        P[2][lane] = p.z;
        P[3][lane] = p.w;
        vec4 alpha = exp(m - mt);
        m = mt;
        l *= alpha;
        [[unroll]] for (uint r = 0u; r < MAXC; r++)
            acc[r] *= alpha;
        barrier();
        uint nk = min(L, pc.hw - j0);
        for (uint jj = 0u; jj < nk; jj++) {
            vec4 pj = vec4(P[0][jj], P[1][jj], P[2][jj], P[3][jj]);
            l += pj;
            [[unroll]] for (uint r = 0u; r < MAXC; r++) {
                uint c = lane + r * L;
                if (r * L < D && c < D)
                    acc[r] += pj * float(act[vb + c * pc.hw + j0 + jj]);
            }
        }
        barrier();
    }
    vec4 inv = 1.0 / l;
    [[unroll]] for (uint r = 0u; r < MAXC; r++) {
        uint c = lane + r * L;
        if (r * L < D && c < D) {
            vec4 o = acc[r] * inv;
            uint base = ob + c * pc.hw;
            if (i0 < pc.hw)
                outp[base + i0] = TO_ACT(o.x);
            if (i0 + 1u < pc.hw)
                outp[base + i0 + 1u] = TO_ACT(o.y);
            if (i0 + 2u < pc.hw)
                outp[base + i0 + 2u] = TO_ACT(o.z);
            if (i0 + 3u < pc.hw)
                outp[base + i0 + 3u] = TO_ACT(o.w);
        }
    }
}
