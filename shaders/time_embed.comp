// time_embed.comp: the sinusoidal timestep embedding of every image, with t read on the GPU from the
// coefficient table row named by the step-index buffer (so a recorded step serves every timestep).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer Act { ACT_T act[]; };
layout(std430, binding = 1) readonly buffer Coef { float coef[]; }; // (n_steps, DDPM_COEF_STRIDE)
layout(std430, binding = 2) readonly buffer Step { uint step; };

// Mirrors vk_time_embed_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint out_off, out_bs, c, n_images, flip;
    float freq_shift;
} pc;

void main()
{
    uint e = gl_GlobalInvocationID.x, b = gl_GlobalInvocationID.y;
    if (e >= pc.c || b >= pc.n_images)
        return;
    float t = coef[step * DDPM_COEF_STRIDE + DDPM_COEF_T];
    uint half_c = pc.c / 2u;
    float v = 0.0;
    if (e < 2u * half_c) {
        uint i = e < half_c ? e : e - half_c;
        float exponent = (-9.210340371976184 * float(i)) / (float(half_c) - pc.freq_shift);
        float arg = t * exp(exponent);
        bool first = e < half_c;
        v = (first != (pc.flip != 0u)) ? sin(arg) : cos(arg);
    }
    act[pc.out_off + b * pc.out_bs + e] = TO_ACT(v);
}
