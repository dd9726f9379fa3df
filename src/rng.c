/* rng.c: counter-based Philox4x32-10 (Salmon et al. 2011, Random123's constants) and the sampler's
 * normal variates (Box-Muller in fp32). shaders/rng.glsl computes the same integers bit for bit. */
#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u /* multiplier applied to counter word 0 */
#define PHILOX_M1 0xCD9E8D57u /* multiplier applied to counter word 2 */
#define PHILOX_W0 0x9E3779B9u /* Weyl key increment, key word 0 (golden ratio) */
#define PHILOX_W1 0xBB67AE85u /* Weyl key increment, key word 1 (sqrt(3) - 1) */

/* One Philox round: two 32x32 -> 64 multiplies, then the words are permuted and keyed. */
static inline void philox_round(uint32_t c[4], const uint32_t k[2])
{
    uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k[0];
    uint32_t n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k[2] = {key[0], key[1]};
    /* Round 1 uses the key as given; the key is bumped by the Weyl constants before rounds 2..10. */
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k[0] += PHILOX_W0;
            k[1] += PHILOX_W1;
        }
        philox_round(c, k);
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

float rng_uniform24(uint32_t x)
{
    /* (x >> 8) is exact in fp32; adding 0.5 is exact below 2^23 and above it rounds to nearest even
     * (the top value, 2^24 - 0.5, becomes 2^24, so u = 1.0 is possible; u = 0 never is). The scale by
     * 2^-24 is exact. The shader must form the same two fp32 operations to agree bit for bit. */
    return ((float)(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

/* Box-Muller on one pair of words (a, b): r = sqrt(-2 ln u_a), angle 2 pi u_b. */
static inline void box_muller(uint32_t a, uint32_t b, float *n0, float *n1)
{
    float ua = rng_uniform24(a);
    float ub = rng_uniform24(b);
    float r = sqrtf(-2.0f * logf(ua));
    float th = 6.28318530717958647692f * ub;
    *n0 = r * cosf(th);
    *n1 = r * sinf(th);
}

void rng_normal4(uint32_t block, uint32_t image, uint32_t step, uint64_t seed, float out[4])
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {block, image, step, 0u};
    uint32_t w[4];
    philox4x32_10(ctr, key, w);
    box_muller(w[0], w[1], &out[0], &out[1]);
    box_muller(w[2], w[3], &out[2], &out[3]);
}

void rng_normal_fill(float *out, int64_t per_image, int n_images, int first_image, uint32_t step,
                     uint64_t seed)
{
    if (per_image <= 0 || n_images <= 0)
        return;
    const int64_t blocks = (per_image + 3) / 4; /* Philox blocks per image; the last may be partial */
    const int64_t total = blocks * n_images;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (total > 16384)
#endif
    for (int64_t j = 0; j < total; j++) {
        int64_t img = j / blocks, blk = j % blocks;
        float z[4];
        rng_normal4((uint32_t)blk, (uint32_t)(first_image + img), step, seed, z);
        float *dst = out + img * per_image + blk * 4;
        int64_t left = per_image - blk * 4;
        int cnt = left < 4 ? (int)left : 4;
        for (int q = 0; q < cnt; q++)
            dst[q] = z[q];
    }
}
