// groupnorm.comp: GroupNorm with the affine transform and an optional SiLU fused, one workgroup per
// (group, image); mean and variance in fp32, two passes (the variance around the mean).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

layout(local_size_x_id = 0) in;
const uint NT = gl_WorkGroupSize.x;

layout(std430, binding = 0) buffer Act { ACT_T act[]; }; // the input
layout(std430, binding = 1) readonly buffer Wt { ACT_T wt[]; };
layout(std430, binding = 2) buffer Out { ACT_T outp[]; }; // the output's activation buffer

// Mirrors vk_groupnorm_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint in_off, in_bs, out_off, out_bs;
    uint gamma_off, beta_off;
    uint c, hw, groups, silu;
    float eps;
} pc;

shared float red[NT];

float reduce_sum(float v)
{
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = NT / 2u; s > 0u; s >>= 1u) {
        if (t < s)
            red[t] += red[t + s];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main()
{
    KEEP_READ_WRITE(pc.c == 0u, act, outp)
    uint g = gl_WorkGroupID.x, b = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
    uint cg = pc.c / pc.groups;
    uint n = cg * pc.hw;
    uint ibase = pc.in_off + b * pc.in_bs + g * n;
    uint obase = pc.out_off + b * pc.out_bs + g * n;
    float s = 0.0;
    for (uint i = t; i < n; i += NT)
        s += float(act[ibase + i]);
    float mean = reduce_sum(s) / float(n);
    float s2 = 0.0;
    for (uint i = t; i < n; i += NT) {
        float d = float(act[ibase + i]) - mean;
        s2 += d * d;
    }
    float rstd = inversesqrt(reduce_sum(s2) / float(n) + pc.eps);
    for (uint cl = 0u; cl < cg; cl++) { // channel by channel: no division per element
        uint ch = g * cg + cl;
        float sc = rstd * float(wt[pc.gamma_off + ch]), be = float(wt[pc.beta_off + ch]);
        uint off = cl * pc.hw;
        for (uint i = t; i < pc.hw; i += NT) {
            float y = (float(act[ibase + off + i]) - mean) * sc + be;
            if (pc.silu != 0u)
                y = y / (1.0 + exp(-y));
            outp[obase + off + i] = TO_ACT(y);
        }
    }
}
