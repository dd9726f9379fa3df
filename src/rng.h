/* rng.h: counter-based Philox4x32-10 (Salmon et al., Random123), bit-identical to shaders/rng.glsl,
 * and the normal variates of the sampler. Counter = (element / 4, image index, step, 0), key = seed. */
#ifndef DDPM_RNG_H
#define DDPM_RNG_H

#include <stdint.h>

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Uniform in (0, 1) from 24 bits: ((x >> 8) + 0.5) * 2^-24, exact in fp32. */
float rng_uniform24(uint32_t x);

/* Standard normals for n_images images of per_image elements each; image k of the call has index
 * first_image + k. Element e uses Philox block (e/4, image, step, 0) and Box-Muller in fp32 on its
 * words (0,1) -> e%4 = 0,1 and (2,3) -> 2,3: r = sqrt(-2 ln u_a), n = r cos(2 pi u_b), r sin(2 pi u_b). */
void rng_normal_fill(float *out, int64_t per_image, int n_images, int first_image, uint32_t step,
                     uint64_t seed);

/* The four normals of one Philox block (block, image, step, 0): elements 4 block .. 4 block + 3 of that
 * image, exactly as rng_normal_fill computes them (for callers that must not allocate). */
void rng_normal4(uint32_t block, uint32_t image, uint32_t step, uint64_t seed, float out[4]);

#endif
