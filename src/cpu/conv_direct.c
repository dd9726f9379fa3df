/* conv_direct.c: stride-1 convolution without im2col, for the CPU forward and the training backward. Each
 * input channel is copied once into rows of Wp = Z + W floats, Z zeros before each row (Z = max(pl, pr): the
 * zeros ahead of a row are also the right padding of the one before); output pixel q = oy * Wp + ox of this
 * flattened grid is then the sum over (ci, ky, kx) of w * xp[ci][q + ky * Wp + kx + Z - pl], so every tap is
 * one contiguous vector load at a fixed shift and weights are broadcast from a packed copy. Grid columns
 * ox >= Wo are computed and dropped (Wp / Wo more work: 4% at 28x28, 14% at 7x7).
 *   forward   out = conv(x, W) (+ bias, temb, res, scale as conv2d_forward)
 *   dinp      += scale * conv(pad(dout, k - 1 - p), W transposed and flipped): the forward's kernel
 *   dW        += scale * sum over images and grid pixels of dout * shifted x: vectors reduced at the end
 * Kernels for AVX-512 and AVX2+FMA (conv_direct_kernels.h) are picked at run time; the callers take the
 * im2col + GEMM path when neither is there, or with DDPM_CPU_SIMD=generic (DDPM_CPU_SIMD=avx2 keeps an
 * AVX-512 machine on AVX2, and DDPM_CPU_SIMD=direct keeps 3x3 convolutions off Winograd, for the tests).
 * In training, on AVX-512, 3x3 convolutions with 8 or more channels each way and enough images to fill a
 * group of tiles go to conv_winograd.c (sampling stays direct: an image's rounding must not depend on its
 * batch). */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_DCONV 1
#endif

#ifdef HAVE_DCONV

#include "conv_direct.h"
#include "threads.h"

/* Input streams per weight-gradient block: 9 = the taps of one 3x3 channel. */
#define DCONV_WM 9
/* Floats of padded data a weight-gradient pass gathers at a time (images are grouped to fit). */
#define DCONV_DW_GROUP_FLOATS ((size_t)1 << 20)

/* AVX-512 (32 registers): forward 8 channels x 3 vectors = 24 accumulators, weight gradient 3 x 9 = 27 */
#define DK_ATTR __attribute__((target("avx512f")))
#define DK_SUFFIX avx512
#define DK_V __m512
#define DK_VL 16
#define DK_ZERO() _mm512_setzero_ps()
#define DK_LOAD(p) _mm512_loadu_ps(p)
#define DK_BCAST(p) _mm512_set1_ps(*(p))
#define DK_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define DK_STORE(p, v) _mm512_storeu_ps(p, v)
#define DK_SUM(v) _mm512_reduce_add_ps(v)
#define DK_FR 8
#define DK_FP 3
#define DK_WR 3
#include "conv_direct_kernels.h"

__attribute__((target("avx2,fma"))) static inline float sum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* AVX2 (16 registers): forward 6 x 2 = 12 accumulators, weight gradient 1 x 9 */
#define DK_ATTR __attribute__((target("avx2,fma")))
#define DK_SUFFIX avx2
#define DK_V __m256
#define DK_VL 8
#define DK_ZERO() _mm256_setzero_ps()
#define DK_LOAD(p) _mm256_loadu_ps(p)
#define DK_BCAST(p) _mm256_broadcast_ss(p)
#define DK_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define DK_STORE(p, v) _mm256_storeu_ps(p, v)
#define DK_SUM(v) sum256(v)
#define DK_FR 6
#define DK_FP 2
#define DK_WR 1
#include "conv_direct_kernels.h"

static const dconv_isa *dconv_pick(void)
{
    const char *env = getenv("DDPM_CPU_SIMD");
    if (env && strcmp(env, "generic") == 0)
        return NULL;
    if (!(env && strcmp(env, "avx2") == 0) && __builtin_cpu_supports("avx512f"))
        return &dconv_isa_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &dconv_isa_avx2;
    return NULL;
}

/* The flattened grid of a stride-1 convolution of a (C, H, W) input with padding (pt, pl, pb, pr). */
typedef struct dconv_geom {
    int C, H, W, k, pt, pl, Hp, Wp, Ho, Wo;
    int Z;     /* zeros ahead of each row */
    int shift; /* Z - pl: the read offset of tap (0, 0) */
    int nq;    /* Ho * Wp grid pixels */
    int qp;    /* nq rounded up to whole blocks of `block` floats */
    size_t cs; /* floats per padded channel: every shifted read of the last block stays inside */
} dconv_geom;

static dconv_geom dconv_geometry(int C, int H, int W, int k, int pt, int pl, int pb, int pr, int block)
{
    dconv_geom g = {.C = C, .H = H, .W = W, .k = k, .pt = pt, .pl = pl};
    g.Hp = H + pt + pb;
    g.Ho = g.Hp - k + 1;
    g.Wo = W + pl + pr - k + 1;
    g.Z = pl > pr ? pl : pr;
    if (g.Z < g.Wo - W) /* padding beyond k - 1 on both sides: widen so the grid holds every output */
        g.Z = g.Wo - W;
    g.shift = g.Z - pl;
    g.Wp = W + g.Z;
    g.nq = g.Ho * g.Wp;
    g.qp = (g.nq + block - 1) / block * block;
    size_t need = (size_t)g.qp + (size_t)(k - 1) * g.Wp + (size_t)(k - 1) + (size_t)g.shift;
    size_t plane = (size_t)g.Hp * g.Wp + (size_t)g.Z;
    g.cs = (need > plane ? need : plane) + 16;
    return g;
}

/* dst (C, cs) = x (C, H, W) zero-padded onto the grid; channels c0 .. c1 - 1. */
static void dconv_pad(float *dst, const float *x, const dconv_geom *g, int c0, int c1)
{
    /* one memset per channel and plain row copies: the rows are short and per-row calls cost more than
     * the copies */
    for (int c = c0; c < c1; c++) {
        float *d = dst + (size_t)c * g->cs + (size_t)g->pt * g->Wp + (size_t)g->Z;
        const float *s = x + (size_t)c * g->H * g->W;
        memset(dst + (size_t)c * g->cs, 0, g->cs * sizeof(float));
        for (int y = 0; y < g->H; y++)
            for (int i = 0; i < g->W; i++)
                d[(size_t)y * g->Wp + i] = s[(size_t)y * g->W + i];
    }
}

/* dst[j] (+)= (src[j] + add + res[j]) * scale for j < n; res may be NULL. */
static void store_run(float *dst, const float *src, const float *res, float add, float scale, int accumulate,
                      int n)
{
    if (res && accumulate)
        for (int j = 0; j < n; j++)
            dst[j] += (src[j] + add + res[j]) * scale;
    else if (res)
        for (int j = 0; j < n; j++)
            dst[j] = (src[j] + add + res[j]) * scale;
    else if (accumulate)
        for (int j = 0; j < n; j++)
            dst[j] += (src[j] + add) * scale;
    else
        for (int j = 0; j < n; j++)
            dst[j] = (src[j] + add) * scale;
}

/* The forward kernel over a batch: out (B, Co, Ho, Wo) = epilogue(conv(x (B, Ci, H, W), wv)) where the
 * weight of output o, input i, tap t is w[(o * Ci + i) * kk + t], or with flip w[(i * Co + o) * kk + kk - 1 -
 * t] (the transposed, flipped kernel of dinp). Epilogue: v = (acc + b[o] + temb[b, o] + res) * scale, then
 * out = v or out += v (accumulate). With winograd, 3x3 convolutions may go to conv_winograd.c. Returns 0
 * when out of memory (nothing written). */
static int dconv_forward(const dconv_isa *isa, int winograd, float *out, const float *x, const float *w,
                         int flip, const float *bias, const float *temb, const float *res, float scale,
                         int accumulate, int B, int Ci, int H, int W, int Co, int k, int pt, int pl, int pb,
                         int pr)
{
    if (winograd && k == 3 &&
        dconv_winograd(isa, out, x, w, flip, bias, temb, res, scale, accumulate, B, Ci, H, W, Co, pt, pl, pb,
                       pr))
        return 1;
    int FR = isa->fr, PX = isa->fp * isa->vl, kk = k * k;
    dconv_geom g = dconv_geometry(Ci, H, W, k, pt, pl, pb, pr, PX);
    int ncb = (Co + FR - 1) / FR;
    int serial = cpu_in_parallel() || (int64_t)Co * Ci * kk * g.nq < DCONV_PARALLEL_MIN;
    size_t wn = (size_t)ncb * FR * Ci * kk;
    float *wp = cpu_scratch(0, wn * sizeof(float));
    float *xp = cpu_scratch(1, (size_t)Ci * g.cs * sizeof(float));
    int *offs = cpu_scratch(2, (size_t)kk * sizeof(int));
    float *ys_all = cpu_scratch(3, (size_t)(serial ? 1 : cpu_max_threads()) * FR * g.qp * sizeof(float));
    if (!wp || !xp || !offs || !ys_all)
        return 0;
    for (int t = 0; t < kk; t++)
        offs[t] = (t / k) * g.Wp + t % k + g.shift;
    /* wp[cb][ci][t][r]: the block's FR weights of one (ci, t) side by side; zero past Co */
    for (int cb = 0; cb < ncb; cb++)
        for (int ci = 0; ci < Ci; ci++)
            for (int t = 0; t < kk; t++)
                for (int r = 0; r < FR; r++) {
                    int o = cb * FR + r;
                    float v = 0.0f;
                    if (o < Co)
                        v = flip ? w[((size_t)ci * Co + o) * kk + (kk - 1 - t)]
                                 : w[((size_t)o * Ci + ci) * kk + t];
                    wp[(((size_t)cb * Ci + ci) * kk + t) * FR + r] = v;
                }
    int HWo = g.Ho * g.Wo;
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * Ci * H * W;
        if (serial) {
            dconv_pad(xp, xb, &g, 0, Ci);
        } else {
#pragma omp parallel for
            for (int c = 0; c < Ci; c++)
                dconv_pad(xp, xb, &g, c, c + 1);
        }
        float *ob = out + (size_t)b * Co * HWo;
        const float *rb = res ? res + (size_t)b * Co * HWo : NULL;
#pragma omp parallel for schedule(static) if (!serial)
        for (int cb = 0; cb < ncb; cb++) {
            /* the block's FR rows over the whole grid, then the kept columns through the epilogue: reading
             * y long after the kernel wrote it (not right behind its wide stores) */
            float *y = ys_all + (size_t)(serial ? 0 : cpu_thread_num()) * FR * g.qp;
            for (int q0 = 0; q0 < g.qp; q0 += PX)
                isa->fwd(xp + q0, g.cs, Ci, offs, kk, wp + (size_t)cb * Ci * kk * FR, y + q0, (size_t)g.qp);
            for (int r = 0; r < FR && cb * FR + r < Co; r++) {
                int o = cb * FR + r;
                float add = (bias ? bias[o] : 0.0f) + (temb ? temb[(size_t)b * Co + o] : 0.0f);
                for (int oy = 0; oy < g.Ho; oy++) {
                    size_t e = (size_t)o * HWo + (size_t)oy * g.Wo;
                    store_run(ob + e, y + (size_t)r * g.qp + (size_t)oy * g.Wp, rb ? rb + e : NULL, add,
                              scale, accumulate, g.Wo);
                }
            }
        }
    }
    return 1;
}

/* dw (Co, Ci, k, k) += scale * dL/dW from dout (B, Co, Ho, Wo) and x (B, Ci, H, W). Returns 0 when out of
 * memory (nothing written). */
static int dconv_dweight(const dconv_isa *isa, float *dw, const float *dout, const float *x, float scale,
                         int B, int Ci, int H, int W, int Co, int k, int pt, int pl, int pb, int pr)
{
    if (k == 3 && dconv_winograd_dweight(isa, dw, dout, x, scale, B, Ci, H, W, Co, pt, pl, pb, pr))
        return 1;
    int VL = isa->vl, WR = isa->wr, kk = k * k, K = Ci * kk;
    dconv_geom g = dconv_geometry(Ci, H, W, k, pt, pl, pb, pr, VL);
    size_t per_image = (size_t)Ci * g.cs + (size_t)Co * g.qp;
    int group = (int)(DCONV_DW_GROUP_FLOATS / per_image);
    group = group < 1 ? 1 : group > B ? B : group;
    float *xp = cpu_scratch(0, (size_t)group * Ci * g.cs * sizeof(float));
    float *gp = cpu_scratch(1, (size_t)group * Co * g.qp * sizeof(float));
    int nchunk = (K + DCONV_WM - 1) / DCONV_WM, ncb = (Co + WR - 1) / WR;
    size_t *xoff = cpu_scratch(2, (size_t)nchunk * DCONV_WM * sizeof(size_t));
    if (!xp || !gp || !xoff)
        return 0;
    /* stream s = (ci, t) of the im2col row order; the tail of the last chunk repeats stream 0 (dropped) */
    for (int s = 0; s < nchunk * DCONV_WM; s++) {
        int ci = s < K ? s / kk : 0, t = s < K ? s % kk : 0;
        xoff[s] = (size_t)ci * g.cs + (size_t)(t / k) * g.Wp + (size_t)(t % k) + (size_t)g.shift;
    }
    int serial = cpu_in_parallel() || (int64_t)Co * K * g.nq * B < DCONV_PARALLEL_MIN;
    (void)serial; /* only the OpenMP pragmas read it */
    int HWo = g.Ho * g.Wo, nv = g.qp / VL;
    size_t xstride = (size_t)Ci * g.cs, gstride = (size_t)Co * g.qp;
    for (int b0 = 0; b0 < B; b0 += group) {
        int nb = B - b0 < group ? B - b0 : group;
#pragma omp parallel for schedule(static) if (!serial)
        for (int bi = 0; bi < nb; bi++) {
            dconv_pad(xp + (size_t)bi * xstride, x + (size_t)(b0 + bi) * Ci * H * W, &g, 0, Ci);
            /* dout on the grid: zero in the dropped columns and past the last pixel */
            for (int o = 0; o < Co; o++) {
                float *d = gp + (size_t)bi * gstride + (size_t)o * g.qp;
                const float *s = dout + ((size_t)(b0 + bi) * Co + o) * HWo;
                for (int oy = 0; oy < g.Ho; oy++) {
                    float *dr = d + (size_t)oy * g.Wp;
                    const float *sr = s + (size_t)oy * g.Wo;
                    for (int ox = 0; ox < g.Wo; ox++)
                        dr[ox] = sr[ox];
                    for (int ox = g.Wo; ox < g.Wp; ox++)
                        dr[ox] = 0.0f;
                }
                for (size_t q = (size_t)g.nq; q < (size_t)g.qp; q++)
                    d[q] = 0.0f;
            }
        }
#pragma omp parallel for schedule(dynamic) if (!serial)
        for (int cb = 0; cb < ncb; cb++) {
            const float *grow[8];
            float sums[8 * DCONV_WM];
            for (int r = 0; r < WR; r++) {
                int o = cb * WR + r < Co ? cb * WR + r : cb * WR;
                grow[r] = gp + (size_t)o * g.qp;
            }
            for (int c = 0; c < nchunk; c++) {
                isa->dw(grow, xp, xoff + (size_t)c * DCONV_WM, nb, gstride, xstride, nv, sums);
                for (int r = 0; r < WR && cb * WR + r < Co; r++)
                    for (int m = 0; m < DCONV_WM && c * DCONV_WM + m < K; m++)
                        dw[(size_t)(cb * WR + r) * K + c * DCONV_WM + m] += scale * sums[r * DCONV_WM + m];
            }
        }
    }
    return 1;
}

int conv2d_direct_forward(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k, int pt,
                          int pl, int pb, int pr, int winograd)
{
    const dconv_isa *isa = dconv_pick();
    if (!isa || k < 1 || B < 1 || Ci < 1 || Co < 1 || H + pt + pb < k || W + pl + pr < k)
        return 0;
    return dconv_forward(isa, winograd, out, inp, w, 0, b, temb, res, scale, 0, B, Ci, H, W, Co, k, pt, pl,
                         pb, pr);
}

int conv2d_direct_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           float scale, int B, int Ci, int H, int W, int Co, int k, int pt, int pl, int pb,
                           int pr)
{
    const dconv_isa *isa = dconv_pick();
    if (!isa || k < 1 || B < 1 || Ci < 1 || Co < 1 || H + pt + pb < k || W + pl + pr < k)
        return 0;
    /* dinp is a convolution of dout with padding k - 1 - p: only when no padding exceeds k - 1 */
    if (dinp && (pt > k - 1 || pl > k - 1 || pb > k - 1 || pr > k - 1))
        return 0;
    int Ho = H + pt + pb - k + 1, Wo = W + pl + pr - k + 1;
    if (dw && !dconv_dweight(isa, dw, dout, inp, scale, B, Ci, H, W, Co, k, pt, pl, pb, pr))
        return 0;
    if (dinp && !dconv_forward(isa, 1, dinp, dout, w, 1, NULL, NULL, NULL, scale, 1, B, Co, Ho, Wo, Ci, k,
                               k - 1 - pt, k - 1 - pl, k - 1 - pb, k - 1 - pr)) {
        /* dw is done; the caller's fallback must not add it twice */
        return -1;
    }
    return 1;
}

#else

int conv2d_direct_forward(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k, int pt,
                          int pl, int pb, int pr, int winograd)
{
    (void)out, (void)inp, (void)w, (void)b, (void)temb, (void)res, (void)scale, (void)B, (void)Ci, (void)H;
    (void)W, (void)Co, (void)k, (void)pt, (void)pl, (void)pb, (void)pr, (void)winograd;
    return 0;
}

int conv2d_direct_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           float scale, int B, int Ci, int H, int W, int Co, int k, int pt, int pl, int pb,
                           int pr)
{
    (void)dinp, (void)dw, (void)dout, (void)inp, (void)w, (void)scale, (void)B, (void)Ci, (void)H, (void)W;
    (void)Co, (void)k, (void)pt, (void)pl, (void)pb, (void)pr;
    return 0;
}

#endif
