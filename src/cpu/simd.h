/* simd.h: helpers for the CPU ops' vectorised loops: CPU_SIMD_CLONES (one build of a function per x86-64
 * vector level, picked at load time), vexpf (an expf in plain C that compilers vectorise) and dot16. */
#ifndef DDPM_CPU_SIMD_H
#define DDPM_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

/* On x86-64 with glibc (ifunc), GCC builds a function so marked for AVX-512, AVX2 and the baseline (SSE2)
 * and calls the best the CPU has: the compiler's own vectorisation of plain C loops, 2-4 times wider than
 * the baseline. Marked functions do the same float operations in the same order in every build (no FMA
 * contraction in ISO C mode, reductions in explicit lanes), so results do not depend on the CPU.
 * Elsewhere it is empty. For functions whose loops vectorise and that run long enough per call. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) &&                 \
    !defined(DDPM_NO_SIMD_CLONES)
#define CPU_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_SIMD_CLONES
#endif

/* expf within 1.4 ulp, branch-free (libm's expf is a call per element, so a loop calling it stays scalar).
 * e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two so n ln2_hi
 * is exact); e^r by a degree-6 polynomial fitted for relative error (1.9e-9 on that interval); 2^n put
 * into the exponent bits. |x| is clamped to 87.3365 (126 ln 2, so 2^n stays normal) on the integer bits:
 * a float compare would keep GCC from vectorising (it may trap), and NaN passes through. So the result is
 * within 1.4 ulp of e^x for |x| <= 87.33 (checked against exp over every float there), 2^-126 (1.2e-38)
 * instead of less below and 2^126 (8.5e37) instead of more above (infinities included); NaN gives NaN. */
static inline float vexpf(float x)
{
    const uint32_t lim = 0x42aeac4fu; /* 87.33654 */
    uint32_t xb;
    memcpy(&xb, &x, sizeof xb);
    uint32_t mag = xb & 0x7fffffffu;
    mag = mag > lim && mag <= 0x7f800000u ? lim : mag;
    xb = (xb & 0x80000000u) | mag;
    memcpy(&x, &xb, sizeof x);

    const float shifter = 0x1.8p23f;       /* adding it rounds to an integer held in the low mantissa bits */
    float k = x * 0x1.715476p0f + shifter; /* n + shifter, n = round(x / ln 2) in [-126, 126] */
    uint32_t kb;
    memcpy(&kb, &k, sizeof kb);
    float n = k - shifter;
    float r = x - n * 0x1.63p-1f; /* ln2_hi = 0.693359375: 9 significant bits, n ln2_hi exact */
    r = r - n * -0x1.bd0106p-13f; /* ln2_lo = ln 2 - ln2_hi */
    float p = 0x1.6ab98p-10f;
    p = p * r + 0x1.126d0cp-7f;
    p = p * r + 0x1.55589ap-5f;
    p = p * r + 0x1.55540ap-3f;
    p = p * r + 0x1.fffffap-2f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t sb = (kb << 23) + 0x3f800000u; /* 2^n: n + 127 in the exponent field (n is kb's low bits) */
    float s;
    memcpy(&s, &sb, sizeof s);
    return p * s;
}

/* Dot product with 16 independent partial sums: the compiler vectorises it without -ffast-math (a single
 * running sum stays scalar), and the rounding error grows more slowly. */
static inline float dot16(const float *a, const float *b, int64_t n)
{
    float lane[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            lane[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * b[i];
    for (int l = 0; l < 16; l++)
        s += lane[l];
    return s;
}

#endif
