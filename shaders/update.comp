// update.comp: one reverse-process update (DDPM, DDIM, any prediction type) in place on x, driven by
// a row of the coefficient table (shaders/shared.h); the row index comes from a buffer so that a
// command buffer recorded once serves every step.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "rng.glsl"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer X { float x[]; };                  // (n_images, per_image), in place
layout(std430, binding = 1) readonly buffer Out { float model_out[]; }; // same shape
layout(std430, binding = 2) readonly buffer Coef { float coef[]; };     // (n_steps, DDPM_COEF_STRIDE)
layout(std430, binding = 3) readonly buffer Step { uint step; };        // written by the host per step

// Mirrors vk_update_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint per_image;
    uint n_images;
    uint first_image;
    uint seed_lo;
    uint seed_hi;
} pc;

// One invocation per Philox block (4 elements) in x, one image per y: the block's four normals come
// from one Philox call.
void main()
{
    uint block = gl_GlobalInvocationID.x;
    uint k = gl_GlobalInvocationID.y;
    uint e0 = block * 4u;
    if (k >= pc.n_images || e0 >= pc.per_image)
        return;
    uint i = step;
    uint row = i * DDPM_COEF_STRIDE;
    float p0 = coef[row + DDPM_COEF_P0], q0 = coef[row + DDPM_COEF_Q0];
    float p1 = coef[row + DDPM_COEF_P1], q1 = coef[row + DDPM_COEF_Q1], r1 = coef[row + DDPM_COEF_R1];
    float a = coef[row + DDPM_COEF_A], b = coef[row + DDPM_COEF_B], c = coef[row + DDPM_COEF_C];
    float sigma = coef[row + DDPM_COEF_SIGMA], clip = coef[row + DDPM_COEF_CLIP];

    vec4 z = vec4(0.0);
    if (sigma != 0.0)
        z = rng_normal4(block, pc.first_image + k, i, uvec2(pc.seed_lo, pc.seed_hi));

    uint base = k * pc.per_image + e0;
    uint n = min(4u, pc.per_image - e0);
    for (uint j = 0u; j < n; j++) {
        float xv = x[base + j], ov = model_out[base + j];
        float x0 = p0 * xv + q0 * ov;
        if (clip != 0.0)
            x0 = clamp(x0, -clip, clip);
        float eps = p1 * xv + q1 * ov + r1 * x0;
        x[base + j] = a * x0 + b * eps + c * xv + sigma * z[j];
    }
}
