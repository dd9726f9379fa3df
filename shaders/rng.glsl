// rng.glsl: counter-based Philox4x32-10 (Salmon et al., Random123) and the sampler's normal variates,
// bit-identical in their integer outputs to src/rng.c (see src/rng.h for the counter layout).
#ifndef DDPM_RNG_GLSL
#define DDPM_RNG_GLSL

const uint PHILOX_M0 = 0xD2511F53u;
const uint PHILOX_M1 = 0xCD9E8D57u;
const uint PHILOX_W0 = 0x9E3779B9u; // golden ratio
const uint PHILOX_W1 = 0xBB67AE85u; // sqrt(3) - 1

// Ten rounds; the key is bumped after each round (the bump after the last one is unused).
uvec4 philox4x32_10(uvec4 ctr, uvec2 key)
{
    for (int i = 0; i < 10; i++) {
        uint hi0, lo0, hi1, lo1;
        umulExtended(PHILOX_M0, ctr.x, hi0, lo0);
        umulExtended(PHILOX_M1, ctr.z, hi1, lo1);
        ctr = uvec4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
        key += uvec2(PHILOX_W0, PHILOX_W1);
    }
    return ctr;
}

// Uniform in (0, 1] from the top 24 bits: ((x >> 8) + 0.5) * 2^-24, one rounding to fp32
// (add and multiply are correctly rounded in Vulkan, and the multiply by 2^-24 is exact).
float rng_uniform24(uint x)
{
    return (float(x >> 8u) + 0.5) * (1.0 / 16777216.0);
}

// Box-Muller on two words: r = sqrt(-2 ln u_a), (r cos(2 pi u_b), r sin(2 pi u_b)).
// The angle is reduced to [-pi, pi) first (cos(t - pi) = -cos t, sin(t - pi) = -sin t), the range in
// which Vulkan bounds the error of sin and cos; u_b - 0.5 is exact in fp32.
vec2 rng_box_muller(uint a, uint b)
{
    float r = sqrt(-2.0 * log(rng_uniform24(a)));
    float t = 6.2831853071795864769 * (rng_uniform24(b) - 0.5);
    return -r * vec2(cos(t), sin(t));
}

// The four normals of Philox block (block, image, step, 0) with key seed: elements 4 block + 0..3.
vec4 rng_normal4(uint block, uint image, uint step, uvec2 seed)
{
    uvec4 w = philox4x32_10(uvec4(block, image, step, 0u), seed);
    return vec4(rng_box_muller(w.x, w.y), rng_box_muller(w.z, w.w));
}

#endif
