/* ops.c: the CPU forward of every graph op (time embedding, linear, SiLU, conv2d, group norm, attention,
 * upsample, concat), NCHW float32, matching torch / diffusers; OpenMP on outer loops only. */
#include "cpu.h"
#include "simd.h"
#include "threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
/* Without OpenMP the loops run serially; their pragmas are not warnings. */
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_AVX2_KERNEL 1
#endif

/* Multiply-adds below which a convolution runs on one thread: a parallel region costs more than the work,
 * and far more when another process holds a core (a spinning team waits for a descheduled thread). */
#define CPU_PARALLEL_MIN_FLOPS (1 << 20)

/* ---- time embedding, linear, SiLU ------------------------------------------------------------- */

void time_embed_forward(float *out, const float *t, int B, int C, float freq_shift, int flip)
{
    // out (B,C), t (B)
    int half = C / 2;
    /* As diffusers' get_timestep_embedding, every step rounded to float32 like torch does. */
    const float neg_log_max = (float)-log(10000.0);
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * C;
        for (int i = 0; i < half; i++) {
            float exponent = (neg_log_max * (float)i) / ((float)half - freq_shift);
            float arg = t[b] * expf(exponent);
            float s = sinf(arg), c = cosf(arg);
            o[i] = flip ? c : s;
            o[half + i] = flip ? s : c;
        }
        if (C % 2)
            o[C - 1] = 0.0f;
    }
}

void linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int K, int M)
{
    // out (B,M), inp (B,K), w (M,K), b (M) or NULL
#pragma omp parallel for collapse(2) if ((int64_t)B * M * K > (1 << 20))
    for (int bi = 0; bi < B; bi++) {
        for (int m = 0; m < M; m++) {
            const float *x = inp + (size_t)bi * K;
            const float *wr = w + (size_t)m * K;
            out[(size_t)bi * M + m] = dot16(wr, x, K) + (b ? b[m] : 0.0f);
        }
    }
}

void silu_forward(float *out, const float *inp, int64_t n)
{
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

/* ---- conv2d ----------------------------------------------------------------------------------- */

/* The straightforward convolution: the reference the fast path is tested against and its fallback
 * when scratch memory cannot be had. Same arguments as conv2d_forward. */
void conv2d_forward_naive(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k,
                          int stride, int pt, int pl, int pb, int pr);

void conv2d_forward_naive(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k,
                          int stride, int pt, int pl, int pb, int pr)
{
    // out (B,Co,Ho,Wo), inp (B,Ci,H,W), w (Co,Ci,k,k), b (Co) or NULL, temb (B,Co) or NULL,
    // res (B,Co,Ho,Wo) or NULL
    int Ho = (H + pt + pb - k) / stride + 1, Wo = (W + pl + pr - k) / stride + 1;
    if (Ho <= 0 || Wo <= 0)
        return;
#pragma omp parallel for collapse(2) if ((int64_t)B * Co * Ho * Wo * Ci * k * k > CPU_PARALLEL_MIN_FLOPS)
    for (int bi = 0; bi < B; bi++) {
        for (int co = 0; co < Co; co++) {
            float *o = out + ((size_t)bi * Co + co) * Ho * Wo;
            const float *r = res ? res + ((size_t)bi * Co + co) * Ho * Wo : NULL;
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) {
                    float acc = 0.0f;
                    for (int ci = 0; ci < Ci; ci++) {
                        const float *x = inp + ((size_t)bi * Ci + ci) * H * W;
                        const float *wk = w + ((size_t)co * Ci + ci) * k * k;
                        for (int ky = 0; ky < k; ky++) {
                            int iy = oy * stride - pt + ky;
                            if (iy < 0 || iy >= H)
                                continue;
                            for (int kx = 0; kx < k; kx++) {
                                int ix = ox * stride - pl + kx;
                                if (ix >= 0 && ix < W)
                                    acc += wk[ky * k + kx] * x[(size_t)iy * W + ix];
                            }
                        }
                    }
                    float v = acc + (b ? b[co] : 0.0f);
                    if (temb)
                        v += temb[(size_t)bi * Co + co];
                    if (r)
                        v += r[(size_t)oy * Wo + ox];
                    o[(size_t)oy * Wo + ox] = v * scale;
                }
            }
        }
    }
}

/* The fast path is an implicit GEMM: out(Co, Ho*Wo) = W(Co, K) X(K, Ho*Wo) with K = Ci*k*k, per batch
 * item. X is never materialised whole: each task packs an im2col chunk of up to CONV_NC output pixels into
 * panels of NR columns (K x NR, contiguous) and runs a register-blocked MR x NR micro-kernel over
 * every panel for a group of output channels. Weights are read in place, MR rows at a time. */
#define CONV_MR 6
#define CONV_NC 64                     /* most output pixels per task: a multiple of every NR */
#define CONV_CHUNK_FLOATS (128 * 1024) /* a packed chunk stays within a 512 KiB share of L2 */
#define CONV_MG 8                      /* MR-row panels of output channels per task */

/* acc (MR x nr, row-major) = sum over k of arow[r][k] * bp[k][:]: MR weight rows times one packed panel. */
typedef void (*conv_kernel_fn)(int K, const float *const *arow, const float *bp, float *acc);

#if defined(__GNUC__) || defined(__clang__)
/* 128-bit vectors: the width every target has natively (wider generic vectors get spilled by GCC). */
typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Portable 6 x 8 kernel on GCC vector extensions (12 accumulators): SSE2 on x86-64, NEON on arm64. */
static void conv_kernel_6x8(int K, const float *const *arow, const float *bp, float *acc)
{
    v4f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    v4f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    const float *a0 = arow[0], *a1 = arow[1], *a2 = arow[2], *a3 = arow[3], *a4 = arow[4], *a5 = arow[5];
    for (int k = 0; k < K; k++) {
        v4f b0 = load4(bp + (size_t)k * 8), b1 = load4(bp + (size_t)k * 8 + 4);
        c00 += a0[k] * b0;
        c01 += a0[k] * b1;
        c10 += a1[k] * b0;
        c11 += a1[k] * b1;
        c20 += a2[k] * b0;
        c21 += a2[k] * b1;
        c30 += a3[k] * b0;
        c31 += a3[k] * b1;
        c40 += a4[k] * b0;
        c41 += a4[k] * b1;
        c50 += a5[k] * b0;
        c51 += a5[k] * b1;
    }
    const v4f c[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
    memcpy(acc, c, sizeof c);
}
#else
/* Plain C 6 x 8 kernel for compilers without vector extensions. */
static void conv_kernel_6x8(int K, const float *const *arow, const float *bp, float *acc)
{
    for (int i = 0; i < CONV_MR * 8; i++)
        acc[i] = 0.0f;
    for (int k = 0; k < K; k++)
        for (int r = 0; r < CONV_MR; r++)
            for (int j = 0; j < 8; j++)
                acc[r * 8 + j] += arow[r][k] * bp[(size_t)k * 8 + j];
}
#endif

#ifdef HAVE_X86_AVX2_KERNEL
/* 6 x 16 kernel with AVX2 + FMA (12 ymm accumulators), chosen at run time when the CPU has them. */
__attribute__((target("avx2,fma"))) static void conv_kernel_6x16_avx2(int K, const float *const *arow,
                                                                      const float *bp, float *acc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
           c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
           c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
           c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *a0 = arow[0], *a1 = arow[1], *a2 = arow[2], *a3 = arow[3], *a4 = arow[4], *a5 = arow[5];
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_loadu_ps(bp + (size_t)k * 16), b1 = _mm256_loadu_ps(bp + (size_t)k * 16 + 8);
        __m256 a = _mm256_broadcast_ss(a0 + k);
        c00 = _mm256_fmadd_ps(a, b0, c00);
        c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(a1 + k);
        c10 = _mm256_fmadd_ps(a, b0, c10);
        c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(a2 + k);
        c20 = _mm256_fmadd_ps(a, b0, c20);
        c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(a3 + k);
        c30 = _mm256_fmadd_ps(a, b0, c30);
        c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(a4 + k);
        c40 = _mm256_fmadd_ps(a, b0, c40);
        c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(a5 + k);
        c50 = _mm256_fmadd_ps(a, b0, c50);
        c51 = _mm256_fmadd_ps(a, b1, c51);
    }
    _mm256_storeu_ps(acc + 0, c00);
    _mm256_storeu_ps(acc + 8, c01);
    _mm256_storeu_ps(acc + 16, c10);
    _mm256_storeu_ps(acc + 24, c11);
    _mm256_storeu_ps(acc + 32, c20);
    _mm256_storeu_ps(acc + 40, c21);
    _mm256_storeu_ps(acc + 48, c30);
    _mm256_storeu_ps(acc + 56, c31);
    _mm256_storeu_ps(acc + 64, c40);
    _mm256_storeu_ps(acc + 72, c41);
    _mm256_storeu_ps(acc + 80, c50);
    _mm256_storeu_ps(acc + 88, c51);
}
#endif

/* Picks the micro-kernel: AVX2+FMA when the CPU has it, unless DDPM_CPU_SIMD=generic (used by the
 * tests to exercise the portable kernel on x86 too). */
static conv_kernel_fn conv_pick_kernel(int *nr)
{
#ifdef HAVE_X86_AVX2_KERNEL
    const char *env = getenv("DDPM_CPU_SIMD");
    if (!(env && strcmp(env, "generic") == 0) && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma")) {
        *nr = 16;
        return conv_kernel_6x16_avx2;
    }
#endif
    *nr = 8;
    return conv_kernel_6x8;
}

/* Packs output pixels p0 .. p0+np-1 of the im2col matrix of one batch item into panels of nr columns:
 * dst[panel][kidx][j], zero where the kernel window falls in the padding or past the last pixel. */
static void conv_pack_chunk(float *dst, const float *x, int Ci, int H, int W, int Wo, int k, int stride,
                            int pt, int pl, int p0, int np, int nr)
{
    int iy0[CONV_NC], ix0[CONV_NC];
    for (int j = 0; j < np; j++) {
        int p = p0 + j;
        iy0[j] = (p / Wo) * stride - pt;
        ix0[j] = (p % Wo) * stride - pl;
    }
    int K = Ci * k * k, panels = (np + nr - 1) / nr;
    for (int pn = 0; pn < panels; pn++) {
        float *d = dst + (size_t)pn * K * nr;
        int jn = np - pn * nr < nr ? np - pn * nr : nr;
        const int *py = iy0 + pn * nr, *px = ix0 + pn * nr;
        for (int ci = 0; ci < Ci; ci++) {
            const float *xc = x + (size_t)ci * H * W;
            for (int ky = 0; ky < k; ky++) {
                for (int kx = 0; kx < k; kx++) {
                    int j = 0;
                    for (; j < jn; j++) {
                        int iy = py[j] + ky, ix = px[j] + kx;
                        d[j] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[(size_t)iy * W + ix] : 0.0f;
                    }
                    for (; j < nr; j++)
                        d[j] = 0.0f;
                    d += nr;
                }
            }
        }
    }
}

void conv2d_forward(float *out, const float *inp, const float *w, const float *b, const float *temb,
                    const float *res, float scale, int B, int Ci, int H, int W, int Co, int k, int stride,
                    int pt, int pl, int pb, int pr)
{
    // out (B,Co,Ho,Wo), inp (B,Ci,H,W), w (Co,Ci,k,k), b (Co) or NULL, temb (B,Co) or NULL,
    // res (B,Co,Ho,Wo) or NULL (may be out itself); out must not overlap inp.
    // Each output element's sum runs over k in the same order whatever B or the thread count, so an
    // image's result does not depend on the batch it is in or on the number of threads.
    int Ho = (H + pt + pb - k) / stride + 1, Wo = (W + pl + pr - k) / stride + 1;
    if (Ho <= 0 || Wo <= 0 || B <= 0 || Co <= 0)
        return;
    if (stride == 1 &&
        conv2d_direct_forward(out, inp, w, b, temb, res, scale, B, Ci, H, W, Co, k, pt, pl, pb, pr, 0))
        return;
    int nr;
    conv_kernel_fn kernel = conv_pick_kernel(&nr);
    int K = Ci * k * k, N = Ho * Wo;
    int nthreads = cpu_max_threads();
    /* Pixels per chunk: CONV_NC, fewer (a multiple of nr) when K is so large the chunk would leave L2.
     * One chunk buffer per thread, allocated up front so a failure falls back before any work. */
    int nc = CONV_CHUNK_FLOATS / (K > 0 ? K : 1) / nr * nr;
    nc = nc < nr ? nr : nc > CONV_NC ? CONV_NC : nc;
    size_t chunk_floats = (size_t)K * nc;
    float *scratch = malloc((size_t)nthreads * chunk_floats * sizeof(float));
    if (!scratch || K <= 0) {
        free(scratch);
        conv2d_forward_naive(out, inp, w, b, temb, res, scale, B, Ci, H, W, Co, k, stride, pt, pl, pb, pr);
        return;
    }
    int n_chunks = (N + nc - 1) / nc;
    int m_panels = (Co + CONV_MR - 1) / CONV_MR;
    int m_groups = (m_panels + CONV_MG - 1) / CONV_MG;
    int64_t n_tasks = (int64_t)B * n_chunks * m_groups;
#pragma omp parallel for schedule(dynamic) if ((int64_t)B * Co * N * K > CPU_PARALLEL_MIN_FLOPS)
    for (int64_t task = 0; task < n_tasks; task++) {
        int mg = (int)(task % m_groups);
        int chunk = (int)(task / m_groups % n_chunks);
        int bi = (int)(task / m_groups / n_chunks);
        float *bpack = scratch + (size_t)cpu_thread_num() * chunk_floats;
        int p0 = chunk * nc, np = N - p0 < nc ? N - p0 : nc;
        conv_pack_chunk(bpack, inp + (size_t)bi * Ci * H * W, Ci, H, W, Wo, k, stride, pt, pl, p0, np, nr);
        float acc[CONV_MR * 16];
        int mp_end = (mg + 1) * CONV_MG < m_panels ? (mg + 1) * CONV_MG : m_panels;
        for (int mp = mg * CONV_MG; mp < mp_end; mp++) {
            int m0 = mp * CONV_MR;
            int mn = Co - m0 < CONV_MR ? Co - m0 : CONV_MR;
            /* Rows past Co repeat the last one; their results are discarded. */
            const float *arow[CONV_MR];
            for (int r = 0; r < CONV_MR; r++)
                arow[r] = w + (size_t)(r < mn ? m0 + r : Co - 1) * K;
            for (int pn = 0; pn * nr < np; pn++) {
                kernel(K, arow, bpack + (size_t)pn * K * nr, acc);
                int pbase = p0 + pn * nr, jn = np - pn * nr < nr ? np - pn * nr : nr;
                for (int r = 0; r < mn; r++) {
                    int co = m0 + r;
                    float add = (b ? b[co] : 0.0f) + (temb ? temb[(size_t)bi * Co + co] : 0.0f);
                    size_t obase = ((size_t)bi * Co + co) * N + pbase;
                    float *o = out + obase;
                    const float *a = acc + r * nr;
                    if (res) {
                        const float *rr = res + obase;
                        for (int j = 0; j < jn; j++)
                            o[j] = (a[j] + add + rr[j]) * scale;
                    } else {
                        for (int j = 0; j < jn; j++)
                            o[j] = (a[j] + add) * scale;
                    }
                }
            }
        }
    }
    free(scratch);
}

/* ---- group norm ------------------------------------------------------------------------------- */

/* Floats per block of groupnorm_stats: summed in float lanes, blocks merged in double. */
#define GN_BLOCK 512

CPU_SIMD_CLONES void groupnorm_stats(float *mean, float *rstd, const float *x, int64_t n, float eps)
{
    // One pass over memory: each block's sum in 16 float lanes (vectorised), then its squared deviations
    // around its own mean while it is in L1; blocks merged in double (Chan, Golub, LeVeque), which stays
    // exact when the mean is large against the spread.
    double cnt = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t b0 = 0; b0 < n; b0 += GN_BLOCK) {
        int bn = n - b0 < GN_BLOCK ? (int)(n - b0) : GN_BLOCK;
        const float *xb = x + b0;
        float lane[16] = {0}, lane2[16] = {0};
        int i = 0;
        for (; i + 16 <= bn; i += 16)
            for (int l = 0; l < 16; l++)
                lane[l] += xb[i + l];
        float s = 0.0f;
        for (; i < bn; i++)
            s += xb[i];
        for (int l = 0; l < 16; l++)
            s += lane[l];
        float bmean = s / (float)bn, q = 0.0f;
        for (i = 0; i + 16 <= bn; i += 16)
            for (int l = 0; l < 16; l++) {
                float d = xb[i + l] - bmean;
                lane2[l] += d * d;
            }
        for (; i < bn; i++) {
            float d = xb[i] - bmean;
            q += d * d;
        }
        for (int l = 0; l < 16; l++)
            q += lane2[l];
        double tot = cnt + bn, delta = (double)bmean - mu;
        mu += delta * bn / tot;
        m2 += (double)q + delta * delta * cnt * bn / tot;
        cnt = tot;
    }
    double var = n > 0 ? m2 / (double)n : 0.0;
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(var + (double)eps));
}

/* One group of one image: cg channels of HW floats from x to o, gamma / beta (or NULL) at its first channel.
 */
CPU_SIMD_CLONES static void groupnorm_group(float *o, const float *x, const float *gamma, const float *beta,
                                            int cg, int HW, float eps, int silu)
{
    float mean, rstd;
    groupnorm_stats(&mean, &rstd, x, (int64_t)cg * HW, eps);
    for (int c = 0; c < cg; c++) {
        float ga = gamma ? gamma[c] : 1.0f, be = beta ? beta[c] : 0.0f;
        /* (x - mean) first: no cancellation between a large x * scale and shift. */
        float sc = rstd * ga;
        const float *xc = x + (size_t)c * HW;
        float *oc = o + (size_t)c * HW;
        if (silu) {
            for (int i = 0; i < HW; i++) {
                float y = (xc[i] - mean) * sc + be;
                oc[i] = y / (1.0f + vexpf(-y));
            }
        } else {
            for (int i = 0; i < HW; i++)
                oc[i] = (xc[i] - mean) * sc + be;
        }
    }
}

void groupnorm_forward(float *out, const float *inp, const float *gamma, const float *beta, int B, int C,
                       int HW, int groups, float eps, int silu)
{
    // out (B,C,HW), inp (B,C,HW), gamma (C) or NULL, beta (C) or NULL
    if (groups <= 0 || C % groups)
        return;
    int cg = C / groups;
    /* Small tensors stay on one thread: a parallel region costs more than the work. */
#pragma omp parallel for collapse(2) if ((int64_t)B * C * HW > 32768)
    for (int bi = 0; bi < B; bi++) {
        for (int g = 0; g < groups; g++) {
            size_t base = ((size_t)bi * C + (size_t)g * cg) * HW;
            groupnorm_group(out + base, inp + base, gamma ? gamma + g * cg : NULL,
                            beta ? beta + g * cg : NULL, cg, HW, eps, silu);
        }
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

/* One query row without scratch memory (the fallback when a row buffer cannot be allocated): the
 * scores are recomputed in each of three passes (max, normaliser, weighted sum). */
static void attention_row_noscratch(float *o, const float *q, const float *k, const float *v, int d, int HW,
                                    int i, float sc)
{
    float mx = -INFINITY;
    for (int j = 0; j < HW; j++) {
        float s = 0.0f;
        for (int c = 0; c < d; c++)
            s += q[(size_t)c * HW + i] * k[(size_t)c * HW + j];
        mx = fmaxf(mx, s * sc);
    }
    float z = 0.0f;
    for (int j = 0; j < HW; j++) {
        float s = 0.0f;
        for (int c = 0; c < d; c++)
            s += q[(size_t)c * HW + i] * k[(size_t)c * HW + j];
        z += expf(s * sc - mx);
    }
    for (int c = 0; c < d; c++)
        o[(size_t)c * HW + i] = 0.0f;
    for (int j = 0; j < HW; j++) {
        float s = 0.0f;
        for (int c = 0; c < d; c++)
            s += q[(size_t)c * HW + i] * k[(size_t)c * HW + j];
        float p = expf(s * sc - mx) / z;
        for (int c = 0; c < d; c++)
            o[(size_t)c * HW + i] += p * v[(size_t)c * HW + j];
    }
}

/* The largest of p[0 .. n-1], n >= 1 (NaN when one is): the maximum of order-preserving unsigned keys of
 * the floats, which vectorises (a running float maximum does not). */
static inline float max_of(const float *p, int n)
{
    uint32_t m = 0;
    for (int j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &p[j], sizeof u);
        u ^= ((0u - (u >> 31)) >> 1) ^ 0x80000000u; /* negatives: magnitude bits flipped; sign bit flipped */
        m = u > m ? u : m;
    }
    m ^= 0x80000000u;
    m ^= (0u - (m >> 31)) >> 1;
    float mx;
    memcpy(&mx, &m, sizeof mx);
    return mx;
}

/* p[j] = e^(p[j] - shift) for j < n (vexpf), returning their sum (16 partial sums: vectorised). */
static inline float exp_shifted_sum(float *p, int n, float shift)
{
    float lane[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) {
            float e = vexpf(p[j + l] - shift);
            p[j + l] = e;
            lane[l] += e;
        }
    float z = 0.0f;
    for (; j < n; j++) {
        p[j] = vexpf(p[j] - shift);
        z += p[j];
    }
    for (int l = 0; l < 16; l++)
        z += lane[l];
    return z;
}

CPU_SIMD_CLONES void softmax_rows(float *P, int rows, int n)
{
    for (int i = 0; i < rows; i++) {
        float *p = P + (size_t)i * n;
        float z = exp_shifted_sum(p, n, max_of(p, n)), inv = 1.0f / z;
        for (int j = 0; j < n; j++)
            p[j] *= inv;
    }
}

void attention_forward(float *out, const float *q, const float *k, const float *v, int B, int C, int HW,
                       int heads)
{
    // out (B,C,HW), q k v (B,C,HW); head h owns channels h*d .. h*d+d-1 (d = C/heads), as diffusers.
    // A task is a block of R query rows of one (item, head): S = softmax_rows(sc Q[:, rows]^T K) (R x HW),
    // O[:, rows] = V S^T. The blocks depend on HW alone (never on the batch or the threads), so an
    // image's result does not either; R * HW floats of scratch per thread (slot 0), not HW x HW.
    if (heads <= 0 || C % heads || HW <= 0 || B <= 0)
        return;
    int d = C / heads;
    float sc = 1.0f / sqrtf((float)d);
    int nb = (HW + 63) / 64, R = (HW + nb - 1) / nb; /* blocks of at most 64 rows, evenly sized */
    nb = (HW + R - 1) / R;
    int64_t tasks = (int64_t)B * heads * nb;
#pragma omp parallel if (tasks > 1 && tasks * R * HW * d > 65536)
    {
        float *S = cpu_scratch(0, (size_t)R * HW * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t bh = t / nb;
            int r0 = (int)(t % nb) * R, nr = HW - r0 < R ? HW - r0 : R;
            size_t off = (size_t)bh * d * HW; /* bh = b * heads + h: the head's channel block */
            const float *qh = q + off, *kh = k + off, *vh = v + off;
            if (!S) { /* no scratch: each row on its own */
                for (int i = r0; i < r0 + nr; i++)
                    attention_row_noscratch(out + off, qh, kh, vh, d, HW, i, sc);
                continue;
            }
            cpu_sgemm(1, 0, nr, HW, d, sc, qh + r0, HW, kh, HW, 0.0f, S, HW);
            softmax_rows(S, nr, HW);
            cpu_sgemm(0, 1, d, nr, HW, 1.0f, vh, HW, S, HW, 0.0f, out + off + r0, HW);
        }
    }
}

/* ---- upsample, concat ------------------------------------------------------------------------- */

void upsample_forward(float *out, const float *inp, int B, int C, int H, int W)
{
    // out (B,C,2H,2W), inp (B,C,H,W): nearest neighbour, out[y][x] = inp[y/2][x/2]
    int64_t planes = (int64_t)B * C;
#pragma omp parallel for if (planes * H * W > (1 << 18))
    for (int64_t pc = 0; pc < planes; pc++) {
        const float *x = inp + (size_t)pc * H * W;
        float *o = out + (size_t)pc * 4 * H * W;
        for (int y = 0; y < H; y++) {
            float *r0 = o + (size_t)(2 * y) * 2 * W, *r1 = r0 + 2 * W;
            for (int xx = 0; xx < W; xx++) {
                float val = x[(size_t)y * W + xx];
                r0[2 * xx] = val;
                r0[2 * xx + 1] = val;
            }
            memcpy(r1, r0, (size_t)2 * W * sizeof(float));
        }
    }
}

void concat_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb, int HW)
{
    // out (B,Ca+Cb,HW), a (B,Ca,HW), b (B,Cb,HW)
    for (int bi = 0; bi < B; bi++) {
        float *o = out + (size_t)bi * (Ca + Cb) * HW;
        memcpy(o, a + (size_t)bi * Ca * HW, (size_t)Ca * HW * sizeof(float));
        memcpy(o + (size_t)Ca * HW, b + (size_t)bi * Cb * HW, (size_t)Cb * HW * sizeof(float));
    }
}
