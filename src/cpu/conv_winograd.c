/* conv_winograd.c: the 3x3 stride-1 forward (and through it the input gradient) by Winograd's F(2x2, 3x3)
 * on AVX-512. A 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A of its 4x4 input patch d, so 16 products
 * per (output channel, input channel, tile) replace 36 multiply-adds. Per group of images:
 *   V[xi][ci][tile] = (B^T d B)[xi]      input transform, 16 tiles of a tile row per vector
 *   M[xi] = U[xi] V[xi]                  16 matrix products over the input channels, on conv_direct's
 *                                        forward kernel (U[xi][co][ci] = (G g G^T)[xi], packed once)
 *   out = epilogue(A^T M A)              output transform, written as whole output rows
 * The tiles of a tile row sit side by side, so even and odd input columns are split by permutes and the
 * outputs' columns interleaved back the same way. Rounding differs from the direct sum by a few ulps. */
#include "conv_direct.h"
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

/* Channels below which the transforms cost more than the products save: such convolutions stay direct. */
#define WINO_MIN_CHANNELS 8
/* Tiles per group of images: enough for a few of the forward kernel's pixel blocks per product. */
#define WINO_GROUP_TILES 192

/* U[xi][cb][ci][r] = (G g G^T)[xi] of output channel cb * FR + r (zero past Co) and input channel ci; g is
 * w[co][ci], or with flip the transposed, flipped w[ci][co] (see conv_direct.c). */
static void wino_weights(float *U, const float *w, int flip, int Ci, int Co, int FR, int ncb)
{
    for (int co = 0; co < ncb * FR; co++)
        for (int ci = 0; ci < Ci; ci++) {
            float g[3][3], t[4][3];
            for (int e = 0; e < 9; e++) {
                float v = 0.0f;
                if (co < Co)
                    v = flip ? w[((size_t)ci * Co + co) * 9 + 8 - e] : w[((size_t)co * Ci + ci) * 9 + e];
                g[e / 3][e % 3] = v;
            }
            for (int j = 0; j < 3; j++) { /* G g */
                t[0][j] = g[0][j];
                t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
                t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
                t[3][j] = g[2][j];
            }
            for (int i = 0; i < 4; i++) { /* (G g) G^T */
                float u[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                              0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (int j = 0; j < 4; j++)
                    U[((((size_t)(i * 4 + j) * ncb + co / FR) * Ci + ci) * FR) + co % FR] = u[j];
            }
        }
}

static __mmask16 lanes(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* V[xi * vplane + ci * tpad + t0 + ty * tw + tx] = (B^T d B)[xi] of tile (ty, tx) for channels c0 .. c1 - 1
 * of one padded image xp (conv_direct's grid: patch row i of the tile starts at (2 ty + i) Wp + 2 tx +
 * shift). */
__attribute__((target("avx512f"))) static void wino_input(float *V, size_t vplane, size_t tpad, size_t t0,
                                                          const float *xp, const dconv_geom *g, int th,
                                                          int tw, int c0, int c1)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int ci = c0; ci < c1; ci++) {
        const float *xc = xp + (size_t)ci * g->cs + g->shift;
        float *vc = V + (size_t)ci * tpad + t0;
        for (int ty = 0; ty < th; ty++)
            for (int tx0 = 0; tx0 < tw; tx0 += 16) {
                __m512 d[4][4], t[4][4];
                for (int i = 0; i < 4; i++) {
                    const float *row = xc + (size_t)(2 * ty + i) * g->Wp + 2 * tx0;
                    __m512 a = _mm512_loadu_ps(row), b = _mm512_loadu_ps(row + 16);
                    __m512 a2 = _mm512_loadu_ps(row + 2), b2 = _mm512_loadu_ps(row + 18);
                    d[i][0] = _mm512_permutex2var_ps(a, ev, b); /* columns 2 tx */
                    d[i][1] = _mm512_permutex2var_ps(a, od, b); /* 2 tx + 1 */
                    d[i][2] = _mm512_permutex2var_ps(a2, ev, b2);
                    d[i][3] = _mm512_permutex2var_ps(a2, od, b2);
                }
                for (int j = 0; j < 4; j++) { /* B^T d */
                    t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                    t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                    t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                    t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
                }
                __mmask16 m = lanes(tw - tx0);
                float *v = vc + (size_t)ty * tw + tx0;
                for (int i = 0; i < 4; i++) { /* (B^T d) B */
                    float *vi = v + (size_t)(4 * i) * vplane;
                    _mm512_mask_storeu_ps(vi, m, _mm512_sub_ps(t[i][0], t[i][2]));
                    _mm512_mask_storeu_ps(vi + vplane, m, _mm512_add_ps(t[i][1], t[i][2]));
                    _mm512_mask_storeu_ps(vi + 2 * vplane, m, _mm512_sub_ps(t[i][2], t[i][1]));
                    _mm512_mask_storeu_ps(vi + 3 * vplane, m, _mm512_sub_ps(t[i][1], t[i][3]));
                }
            }
    }
}

/* One output row segment: out[j] (+)= (y[j] + add + res[j]) * scale for the lanes in m. */
__attribute__((target("avx512f"))) static inline void
wino_store(float *out, const float *res, __m512 y, __m512 add, __m512 scale, int accumulate, __mmask16 m)
{
    __m512 v = _mm512_add_ps(y, add);
    if (res)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
    v = _mm512_mul_ps(v, scale);
    if (accumulate)
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), v);
    _mm512_mask_storeu_ps(out, m, v);
}

/* Output channel co of one image: out (Ho, Wo) (+)= epilogue of A^T M A from M[xi * mplane + t0 + tile]. */
__attribute__((target("avx512f"))) static void wino_output(float *out, const float *res, const float *M,
                                                           size_t mplane, size_t t0, int Ho, int Wo, int th,
                                                           int tw, float add, float scale, int accumulate)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    __m512 vadd = _mm512_set1_ps(add), vscale = _mm512_set1_ps(scale);
    for (int ty = 0; ty < th; ty++)
        for (int tx0 = 0; tx0 < tw; tx0 += 16) {
            const float *mt = M + t0 + (size_t)ty * tw + tx0;
            __m512 m[16], s[2][4];
            for (int xi = 0; xi < 16; xi++)
                m[xi] = _mm512_loadu_ps(mt + (size_t)xi * mplane);
            for (int j = 0; j < 4; j++) { /* A^T M */
                s[0][j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
                s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
            }
            int ncol = Wo - 2 * tx0 < 32 ? Wo - 2 * tx0 : 32;
            __mmask16 m0 = lanes(ncol), m1 = lanes(ncol - 16 > 0 ? ncol - 16 : 0);
            for (int i = 0; i < 2 && 2 * ty + i < Ho; i++) { /* (A^T M) A, columns interleaved back */
                __m512 y0 = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
                __m512 y1 = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
                size_t e = (size_t)(2 * ty + i) * Wo + 2 * tx0;
                const float *r = res ? res + e : NULL;
                wino_store(out + e, r, _mm512_permutex2var_ps(y0, lo, y1), vadd, vscale, accumulate, m0);
                if (m1)
                    wino_store(out + e + 16, r ? r + 16 : NULL, _mm512_permutex2var_ps(y0, hi, y1), vadd,
                               vscale, accumulate, m1);
            }
        }
}

int dconv_winograd(const dconv_isa *isa, float *out, const float *x, const float *w, int flip,
                   const float *bias, const float *temb, const float *res, float scale, int accumulate, int B,
                   int Ci, int H, int W, int Co, int pt, int pl, int pb, int pr)
{
    const char *env = getenv("DDPM_CPU_SIMD");
    if (isa->vl != 16 || Ci < WINO_MIN_CHANNELS || Co < WINO_MIN_CHANNELS ||
        (env && strcmp(env, "direct") == 0))
        return 0;
    int FR = isa->fr, PX = isa->fp * isa->vl;
    dconv_geom g = dconv_geometry(Ci, H, W, 3, pt, pl, pb, pr, PX);
    int th = (g.Ho + 1) / 2, tw = (g.Wo + 1) / 2, T = th * tw;
    /* the input transform reads 4 patch rows and 34 columns past each tile row's start */
    size_t need = (size_t)(2 * th + 2) * g.Wp + (size_t)(2 * tw + 48) + (size_t)g.shift;
    g.cs = g.cs > need ? g.cs : need;
    int group = (WINO_GROUP_TILES + T - 1) / T;
    group = group > B ? B : group;
    size_t tpad = ((size_t)group * T + PX - 1) / PX * PX;
    int ncb = (Co + FR - 1) / FR, CoP = ncb * FR;
    size_t vplane = (size_t)Ci * tpad, mplane = (size_t)CoP * tpad;
    float *U = cpu_scratch(0, (size_t)16 * CoP * Ci * sizeof(float));
    float *V = cpu_scratch(1, (size_t)16 * vplane * sizeof(float));
    /* 16 floats of slack for the output transform's full-vector reads past the last tile */
    float *M = cpu_scratch(2, ((size_t)16 * mplane + 16) * sizeof(float));
    float *xp = cpu_scratch(3, (size_t)Ci * g.cs * sizeof(float));
    if (!U || !V || !M || !xp)
        return 0;
    memset(M + (size_t)16 * mplane, 0, 16 * sizeof(float));
    wino_weights(U, w, flip, Ci, Co, FR, ncb);
    static const int offs0[1] = {0};
    int serial = dconv_in_parallel() || (int64_t)Co * Ci * 16 * T * B < DCONV_PARALLEL_MIN;
    int HWo = g.Ho * g.Wo;
    for (int b0 = 0; b0 < B; b0 += group) {
        int nb = B - b0 < group ? B - b0 : group;
        for (int bi = 0; bi < nb; bi++) {
            const float *xb = x + (size_t)(b0 + bi) * Ci * H * W;
#pragma omp parallel for if (!serial)
            for (int c = 0; c < Ci; c++) {
                dconv_pad(xp, xb, &g, c, c + 1);
                wino_input(V, vplane, tpad, (size_t)bi * T, xp, &g, th, tw, c, c + 1);
            }
        }
        int nq = (nb * T + PX - 1) / PX * PX;
        /* zero what the products read past the group's tiles and what the output transform reads past the
         * products' columns: those lanes are dropped, but stay finite */
        for (size_t r = 0; r < (size_t)16 * Ci; r++)
            memset(V + r * tpad + (size_t)nb * T, 0, (tpad - (size_t)nb * T) * sizeof(float));
        for (size_t r = 0; r < (size_t)16 * CoP; r++)
            memset(M + r * tpad + nq, 0, (tpad - (size_t)nq) * sizeof(float));
#pragma omp parallel for schedule(dynamic) if (!serial)
        for (int task = 0; task < 16 * ncb; task++) {
            int xi = task / ncb, cb = task % ncb;
            const float *u = U + ((size_t)xi * ncb + cb) * Ci * FR;
            float *m = M + (size_t)xi * mplane + (size_t)cb * FR * tpad;
            for (int q0 = 0; q0 < nq; q0 += PX)
                isa->fwd(V + (size_t)xi * vplane + q0, tpad, Ci, offs0, 1, u, m + q0, tpad);
        }
#pragma omp parallel for collapse(2) if (!serial)
        for (int bi = 0; bi < nb; bi++)
            for (int co = 0; co < Co; co++) {
                int b = b0 + bi;
                size_t ob = ((size_t)b * Co + co) * HWo;
                float add = (bias ? bias[co] : 0.0f) + (temb ? temb[(size_t)b * Co + co] : 0.0f);
                wino_output(out + ob, res ? res + ob : NULL, M + (size_t)co * tpad, mplane, (size_t)bi * T,
                            g.Ho, g.Wo, th, tw, add, scale, accumulate);
            }
    }
    return 1;
}

/* Output channel co of one image's dout (Ho, Wo) to Z[xi * zplane + t0 + tile] = (A dY A^T)[xi] of its 2x2
 * tiles (zero past the image): the weight gradient's transform of the output gradient. */
__attribute__((target("avx512f"))) static void
wino_grad_output(float *Z, size_t zplane, size_t t0, const float *dout, int Ho, int Wo, int th, int tw)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int ty = 0; ty < th; ty++)
        for (int tx0 = 0; tx0 < tw; tx0 += 16) {
            int ncol = Wo - 2 * tx0 < 32 ? Wo - 2 * tx0 : 32;
            __mmask16 m0 = lanes(ncol), m1 = lanes(ncol - 16 > 0 ? ncol - 16 : 0);
            __m512 y[2][2];
            for (int i = 0; i < 2; i++) {
                __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
                if (2 * ty + i < Ho) {
                    const float *row = dout + (size_t)(2 * ty + i) * Wo + 2 * tx0;
                    a = _mm512_maskz_loadu_ps(m0, row);
                    b = _mm512_maskz_loadu_ps(m1, row + 16);
                }
                y[i][0] = _mm512_permutex2var_ps(a, ev, b);
                y[i][1] = _mm512_permutex2var_ps(a, od, b);
            }
            __m512 r[4][2]; /* A dY */
            for (int j = 0; j < 2; j++) {
                r[0][j] = y[0][j];
                r[1][j] = _mm512_add_ps(y[0][j], y[1][j]);
                r[2][j] = _mm512_sub_ps(y[0][j], y[1][j]);
                r[3][j] = _mm512_sub_ps(_mm512_setzero_ps(), y[1][j]);
            }
            __mmask16 m = lanes(tw - tx0);
            float *z = Z + t0 + (size_t)ty * tw + tx0;
            for (int i = 0; i < 4; i++) { /* (A dY) A^T */
                float *zi = z + (size_t)(4 * i) * zplane;
                _mm512_mask_storeu_ps(zi, m, r[i][0]);
                _mm512_mask_storeu_ps(zi + zplane, m, _mm512_add_ps(r[i][0], r[i][1]));
                _mm512_mask_storeu_ps(zi + 2 * zplane, m, _mm512_sub_ps(r[i][0], r[i][1]));
                _mm512_mask_storeu_ps(zi + 3 * zplane, m, _mm512_sub_ps(_mm512_setzero_ps(), r[i][1]));
            }
        }
}

/* dw (Co, Ci, 3, 3) += scale * G^T dU G with dU[xi][co][ci] = sum over tiles of (A dY A^T)[xi] (B^T d B)[xi]:
 * the gradient of the forward above, its 16 tile sums on conv_direct's weight-gradient kernel. Same contract
 * as conv_direct.c's dconv_dweight: returns 0 when it did nothing. */
int dconv_winograd_dweight(const dconv_isa *isa, float *dw, const float *dout, const float *x, float scale,
                           int B, int Ci, int H, int W, int Co, int pt, int pl, int pb, int pr)
{
    const char *env = getenv("DDPM_CPU_SIMD");
    if (isa->vl != 16 || Ci < WINO_MIN_CHANNELS || Co < WINO_MIN_CHANNELS ||
        (env && strcmp(env, "direct") == 0))
        return 0;
    enum { WM = 9 }; /* input streams per weight-gradient kernel call */
    int WR = isa->wr;
    dconv_geom g = dconv_geometry(Ci, H, W, 3, pt, pl, pb, pr, 16);
    int th = (g.Ho + 1) / 2, tw = (g.Wo + 1) / 2, T = th * tw;
    size_t need = (size_t)(2 * th + 2) * g.Wp + (size_t)(2 * tw + 48) + (size_t)g.shift;
    g.cs = g.cs > need ? g.cs : need;
    int group = (WINO_GROUP_TILES + T - 1) / T;
    group = group > B ? B : group;
    size_t tpad = ((size_t)group * T + 15) / 16 * 16;
    size_t vplane = (size_t)Ci * tpad, zplane = (size_t)Co * tpad;
    float *V = cpu_scratch(0, (size_t)16 * vplane * sizeof(float));
    float *Z = cpu_scratch(1, (size_t)16 * zplane * sizeof(float));
    float *dU = cpu_scratch(2, (size_t)16 * Co * Ci * sizeof(float));
    float *xp = cpu_scratch(3, (size_t)Ci * g.cs * sizeof(float));
    if (!V || !Z || !dU || !xp)
        return 0;
    memset(dU, 0, (size_t)16 * Co * Ci * sizeof(float));
    int serial = dconv_in_parallel() || (int64_t)Co * Ci * 16 * T * B < DCONV_PARALLEL_MIN;
    int HWo = g.Ho * g.Wo, ncb = (Co + WR - 1) / WR, nchunk = (Ci + WM - 1) / WM;
    for (int b0 = 0; b0 < B; b0 += group) {
        int nb = B - b0 < group ? B - b0 : group;
        size_t nt = (size_t)nb * T, nv = (nt + 15) / 16;
        for (int bi = 0; bi < nb; bi++) {
            const float *xb = x + (size_t)(b0 + bi) * Ci * H * W;
#pragma omp parallel for if (!serial)
            for (int c = 0; c < Ci; c++) {
                dconv_pad(xp, xb, &g, c, c + 1);
                wino_input(V, vplane, tpad, (size_t)bi * T, xp, &g, th, tw, c, c + 1);
            }
        }
#pragma omp parallel for collapse(2) if (!serial)
        for (int bi = 0; bi < nb; bi++)
            for (int co = 0; co < Co; co++)
                wino_grad_output(Z + (size_t)co * tpad, zplane, (size_t)bi * T,
                                 dout + ((size_t)(b0 + bi) * Co + co) * HWo, g.Ho, g.Wo, th, tw);
        /* tiles past the group's add nothing: zero in both factors */
        for (size_t r = 0; r < (size_t)16 * Ci; r++)
            memset(V + r * tpad + nt, 0, (nv * 16 - nt) * sizeof(float));
        for (size_t r = 0; r < (size_t)16 * Co; r++)
            memset(Z + r * tpad + nt, 0, (nv * 16 - nt) * sizeof(float));
#pragma omp parallel for schedule(dynamic) if (!serial)
        for (int task = 0; task < 16 * ncb; task++) {
            int xi = task / ncb, cb = task % ncb;
            const float *grow[8];
            size_t xoff[WM];
            float sums[8 * WM];
            for (int r = 0; r < WR; r++) /* rows past Co repeat row cb * WR; their sums are dropped */
                grow[r] = Z + (size_t)xi * zplane + (size_t)(cb * WR + r < Co ? cb * WR + r : cb * WR) * tpad;
            for (int c = 0; c < nchunk; c++) {
                for (int m = 0; m < WM; m++)
                    xoff[m] = (size_t)(c * WM + m < Ci ? c * WM + m : 0) * tpad;
                isa->dw(grow, V + (size_t)xi * vplane, xoff, 1, 0, 0, (int)nv, sums);
                for (int r = 0; r < WR && cb * WR + r < Co; r++)
                    for (int m = 0; m < WM && c * WM + m < Ci; m++)
                        dU[((size_t)xi * Co + cb * WR + r) * Ci + c * WM + m] += sums[r * WM + m];
            }
        }
    }
#pragma omp parallel for if (!serial)
    for (int co = 0; co < Co; co++)
        for (int ci = 0; ci < Ci; ci++) {
            float u[4][4], t[3][4];
            for (int xi = 0; xi < 16; xi++)
                u[xi / 4][xi % 4] = dU[((size_t)xi * Co + co) * Ci + ci];
            for (int j = 0; j < 4; j++) { /* G^T dU */
                t[0][j] = u[0][j] + 0.5f * (u[1][j] + u[2][j]);
                t[1][j] = 0.5f * (u[1][j] - u[2][j]);
                t[2][j] = 0.5f * (u[1][j] + u[2][j]) + u[3][j];
            }
            float *d = dw + ((size_t)co * Ci + ci) * 9;
            for (int i = 0; i < 3; i++) { /* (G^T dU) G */
                d[i * 3 + 0] += scale * (t[i][0] + 0.5f * (t[i][1] + t[i][2]));
                d[i * 3 + 1] += scale * (0.5f * (t[i][1] - t[i][2]));
                d[i * 3 + 2] += scale * (0.5f * (t[i][1] + t[i][2]) + t[i][3]);
            }
        }
    return 1;
}

#else
typedef int dconv_winograd_unused; /* not an empty translation unit */
#endif
