// noise.comp: fills a buffer with the sampler's standard normals (rng_normal_fill on the GPU), or, in
// raw mode, with the Philox words themselves so tests can compare them bit for bit with the CPU.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "rng.glsl"

layout(local_size_x_id = 0) in;

// Written as bits: floats in normal mode, Philox words in raw mode. Image k at [k * per_image, ...).
layout(std430, binding = 0) writeonly buffer Out { uint words[]; };

// Mirrors vk_noise_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint per_image;
    uint n_images;
    uint first_image;
    uint step;
    uint seed_lo;
    uint seed_hi;
    uint mode; // 0: normals, 1: raw Philox words
    uint raw_ctr0;
    uint raw_ctr3;
} pc;

// One invocation per Philox block (4 elements) in x, one image per y.
void main()
{
    uint block = gl_GlobalInvocationID.x;
    uint k = gl_GlobalInvocationID.y;
    uint e0 = block * 4u;
    if (k >= pc.n_images || e0 >= pc.per_image)
        return;
    uint image = pc.first_image + k;
    uvec2 key = uvec2(pc.seed_lo, pc.seed_hi);
    uvec4 v;
    if (pc.mode == 1u)
        v = philox4x32_10(uvec4(block + pc.raw_ctr0, image, pc.step, pc.raw_ctr3), key);
    else
        v = floatBitsToUint(rng_normal4(block, image, pc.step, key));
    uint base = k * pc.per_image + e0;
    uint n = min(4u, pc.per_image - e0);
    for (uint j = 0u; j < n; j++)
        words[base + j] = v[j];
}
