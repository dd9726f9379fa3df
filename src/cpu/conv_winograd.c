/* conv_winograd.c: 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) on AVX-512: the forward (and through
 * it the input gradient) and the weight gradient. A 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A of its
 * 4x4 input patch d, so 16 products per (output channel, input channel, tile) replace 36 multiply-adds.
 * Forward, per group of images:
 *   V[xi][ci][tile] = (B^T d B)[xi]      input transform, straight from the image (masked loads)
 *   M[xi] = U[xi] V[xi]                  16 matrix products over the input channels, on conv_direct's
 *                                        forward kernel (U[xi][co][ci] = (G g G^T)[xi], packed once)
 *   out = epilogue(A^T M A)              output transform, written as whole output rows
 * Weight gradient: dU[xi] = sum over tiles of (A dY A^T)[xi] V[xi] on the weight-gradient kernel, then
 * dW = G^T dU G. A vector holds 16 tiles of a tile row, or two whole tile rows of up to 8 tiles: even and
 * odd input columns are split by permutes and output columns interleaved back the same way. Only when a
 * group fills WINO_GROUP_TILES tiles (else the products run mostly empty and the direct kernel is faster).
 * Rounding differs from the direct sum by a few ulps. */
#include "conv_direct.h"
#include "cpu.h"
#include "threads.h"

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
/* Tiles per pass of a large image (bands of tile rows) */
#define WINO_MAX_TILES 2048

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

/* 16 floats of row y of a (H, W) plane from column c on, zero outside the plane (masked lanes are not
 * read, so the address may lie before the row). */
/* The lanes of a 16-float load from column c of a row of W floats that fall inside the row. */
static __mmask16 col_mask(int W, int c)
{
    int lo = c < 0 ? -c : 0, hi = W - c < 16 ? W - c : 16;
    return hi <= lo ? 0 : (__mmask16)(lanes(hi) & ~lanes(lo));
}

/* 16 floats of row y of a (H, W) plane from column c on, the lanes of m (col_mask) only, zero elsewhere and
 * outside the plane (masked lanes are not read, so the address may lie before the row). */
__attribute__((target("avx512f"))) static inline __m512 row16(const float *x, int H, int W, int y, int c,
                                                              __mmask16 m)
{
    if (y < 0 || y >= H || !m)
        return _mm512_setzero_ps();
    return _mm512_maskz_loadu_ps(
        m, (const float *)((uintptr_t)(x + (size_t)y * W) + (uintptr_t)(intptr_t)c * 4));
}

/* How the tiles of one vector map to the image: either 16 tiles of one tile row (wide images), or two whole
 * tile rows side by side when they fit (tw <= 8: lanes tw .. 2 tw - 1 hold the second row), so small images
 * keep the lanes busy. Lane l's even column comes from a[ev[l]] or b[ev[l] - 16] of two 16-float loads. */
typedef struct wino_lanes {
    __m512i ev, od; /* even and odd columns of the two loads */
    __m512i ia, ib; /* interleave y0/y1 of the first / second tile row back into output columns */
    int pair;       /* two tile rows per vector */
} wino_lanes;

__attribute__((target("avx512f"))) static wino_lanes wino_lanes_for(int tw)
{
    int ev[16], od[16], ia[16], ib[16];
    int pair = tw <= 8;
    for (int l = 0; l < 16; l++) {
        int src = pair && l >= tw ? 16 + 2 * (l - tw) : 2 * l; /* pair: lane l >= tw reads the second load */
        ev[l] = src & 31;
        od[l] = (src + 1) & 31;
        ia[l] = (l & 1 ? 16 : 0) + l / 2;
        ib[l] = ((l & 1 ? 16 : 0) + (pair ? tw : 8) + l / 2) & 31;
    }
    wino_lanes w = {_mm512_loadu_si512(ev), _mm512_loadu_si512(od), _mm512_loadu_si512(ia),
                    _mm512_loadu_si512(ib), pair};
    return w;
}

/* d[i][j] of a vector of tiles: column offset j of rows i = 0..3 of a (H, W) plane; rows ya + i and yb + i,
 * columns from ca and cb (see wino_lanes). */
__attribute__((target("avx512f"))) static inline void
wino_patch(__m512 d[4][4], const float *x, int H, int W, int ya, int ca, int yb, int cb, const wino_lanes *L)
{
    __mmask16 ma = col_mask(W, ca), ma2 = col_mask(W, ca + 2), mb = col_mask(W, cb),
              mb2 = col_mask(W, cb + 2);
    for (int i = 0; i < 4; i++) {
        __m512 a = row16(x, H, W, ya + i, ca, ma), b = row16(x, H, W, yb + i, cb, mb);
        __m512 a2 = row16(x, H, W, ya + i, ca + 2, ma2), b2 = row16(x, H, W, yb + i, cb + 2, mb2);
        d[i][0] = _mm512_permutex2var_ps(a, L->ev, b);
        d[i][1] = _mm512_permutex2var_ps(a, L->od, b);
        d[i][2] = _mm512_permutex2var_ps(a2, L->ev, b2);
        d[i][3] = _mm512_permutex2var_ps(a2, L->od, b2);
    }
}

/* V[xi * vplane + ci * tpad + t0 + ty * tw + tx] = (B^T d B)[xi] of tile (ty, tx) for channels c0 .. c1 - 1
 * of one image x (C, H, W); the patch of tile (ty, tx) starts at pixel (2 ty - pt, 2 tx - pl), zero outside.
 */
__attribute__((target("avx512f"))) static void wino_input(float *V, size_t vplane, size_t tpad, size_t t0,
                                                          const float *x, int H, int W, int pt, int pl,
                                                          int ty0, int ty1, int tw, int c0, int c1)
{
    wino_lanes L = wino_lanes_for(tw);
    for (int ci = c0; ci < c1; ci++) {
        const float *xc = x + (size_t)ci * H * W;
        float *vc = V + (size_t)ci * tpad + t0;
        for (int ty = ty0; ty < ty1; ty += L.pair ? 2 : 1)
            for (int tx0 = 0; tx0 < tw; tx0 += 16) {
                __m512 d[4][4], t[4][4];
                int n = tw - tx0 < 16 ? tw - tx0 : 16;
                if (L.pair) {
                    wino_patch(d, xc, H, W, 2 * ty - pt, -pl, 2 * ty + 2 - pt, -pl, &L);
                    n = ty + 1 < ty1 ? 2 * tw : tw;
                } else {
                    wino_patch(d, xc, H, W, 2 * ty - pt, 2 * tx0 - pl, 2 * ty - pt, 2 * tx0 + 16 - pl, &L);
                }
                for (int j = 0; j < 4; j++) { /* B^T d */
                    t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                    t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                    t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                    t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
                }
                __mmask16 m = lanes(n);
                float *v = vc + (size_t)(ty - ty0) * tw + tx0;
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

/* Output channel co of one image: out (Ho, Wo) (+)= epilogue of A^T M A for tile rows ty0 .. ty1 - 1, from
 * M[xi * mplane + t0 + (ty - ty0) * tw + tx]. */
__attribute__((target("avx512f"))) static void wino_output(float *out, const float *res, const float *M,
                                                           size_t mplane, size_t t0, int Ho, int Wo, int ty0,
                                                           int ty1, int tw, float add, float scale,
                                                           int accumulate)
{
    wino_lanes L = wino_lanes_for(tw);
    __m512 vadd = _mm512_set1_ps(add), vscale = _mm512_set1_ps(scale);
    for (int ty = ty0; ty < ty1; ty += L.pair ? 2 : 1)
        for (int tx0 = 0; tx0 < tw; tx0 += 16) {
            const float *mt = M + t0 + (size_t)(ty - ty0) * tw + tx0;
            __m512 m[16], s[2][4];
            for (int xi = 0; xi < 16; xi++)
                m[xi] = _mm512_loadu_ps(mt + (size_t)xi * mplane);
            for (int j = 0; j < 4; j++) { /* A^T M */
                s[0][j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
                s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
            }
            for (int i = 0; i < 2; i++) { /* (A^T M) A, columns interleaved back into output rows */
                __m512 y0 = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
                __m512 y1 = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
                /* the vector's first 16 output columns (of tile row ty), then the next 16: of the same tile
                 * row, or with pair of the tile row below */
                int oy0 = 2 * ty + i, oy1 = L.pair ? oy0 + 2 : oy0, c0 = 2 * tx0, c1 = L.pair ? 0 : c0 + 16;
                int n0 = Wo - c0 < 16 ? Wo - c0 : 16, n1 = Wo - c1 < 16 ? Wo - c1 : 16;
                if (oy0 < Ho) {
                    size_t e = (size_t)oy0 * Wo + c0;
                    wino_store(out + e, res ? res + e : NULL, _mm512_permutex2var_ps(y0, L.ia, y1), vadd,
                               vscale, accumulate, lanes(n0));
                }
                if (oy1 < Ho && n1 > 0 && (!L.pair || ty + 1 < ty1)) {
                    size_t e = (size_t)oy1 * Wo + c1;
                    wino_store(out + e, res ? res + e : NULL, _mm512_permutex2var_ps(y0, L.ib, y1), vadd,
                               vscale, accumulate, lanes(n1));
                }
            }
        }
}

/* How a call walks its tiles: passes over a group of whole images (small images), or over a band of tile
 * rows of one image (large ones, so the transformed planes stay within a few MiB), each pass tpad tiles at
 * most. */
typedef struct wino_plan {
    int Ho, Wo, th, tw, T; /* output size; tile rows, tiles per row, tiles per image */
    int group;             /* images per pass */
    int band;              /* tile rows per pass (th when whole images) */
    size_t tpad;           /* tiles a pass holds, rounded up to `block` */
} wino_plan;

/* 0 when Winograd is not worth it: the batch cannot fill a group of WINO_GROUP_TILES tiles (the products
 * would run mostly empty, and the direct kernel is faster). */
static int wino_plan_for(wino_plan *p, int B, int H, int W, int pt, int pl, int pb, int pr, int block)
{
    p->Ho = H + pt + pb - 2;
    p->Wo = W + pl + pr - 2;
    p->th = (p->Ho + 1) / 2;
    p->tw = (p->Wo + 1) / 2;
    p->T = p->th * p->tw;
    p->group = (WINO_GROUP_TILES + p->T - 1) / p->T;
    p->group = p->group > B ? B : p->group;
    if (p->group * p->T < WINO_GROUP_TILES)
        return 0;
    p->band = p->th;
    if (p->T > WINO_MAX_TILES) { /* an even number of rows: paired tile rows stay paired */
        p->band = WINO_MAX_TILES / p->tw / 2 * 2;
        p->band = p->band < 2 ? 2 : p->band;
    }
    p->tpad = ((size_t)p->group * p->band * p->tw + block - 1) / block * block;
    return 1;
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
    wino_plan P;
    if (!wino_plan_for(&P, B, H, W, pt, pl, pb, pr, PX))
        return 0;
    size_t tpad = P.tpad;
    int ncb = (Co + FR - 1) / FR, CoP = ncb * FR;
    size_t vplane = (size_t)Ci * tpad, mplane = (size_t)CoP * tpad;
    float *U = cpu_scratch(0, (size_t)16 * CoP * Ci * sizeof(float));
    float *V = cpu_scratch(1, (size_t)16 * vplane * sizeof(float));
    /* 16 floats of slack for the output transform's full-vector reads past the last tile */
    float *M = cpu_scratch(2, ((size_t)16 * mplane + 16) * sizeof(float));
    if (!U || !V || !M)
        return 0;
    memset(M + (size_t)16 * mplane, 0, 16 * sizeof(float));
    wino_weights(U, w, flip, Ci, Co, FR, ncb);
    static const int offs0[1] = {0};
    int serial = cpu_in_parallel() || (int64_t)Co * Ci * 16 * P.T * B < DCONV_PARALLEL_MIN;
    (void)serial; /* only the OpenMP pragmas read it */
    int HWo = P.Ho * P.Wo;
    for (int b0 = 0; b0 < B; b0 += P.group)
        for (int ty0 = 0; ty0 < P.th; ty0 += P.band) {
            int nb = B - b0 < P.group ? B - b0 : P.group;
            int ty1 = ty0 + P.band < P.th ? ty0 + P.band : P.th,
                Tb = (ty1 - ty0) * P.tw; /* tiles per image */
            size_t nt = (size_t)nb * Tb, nq = (nt + PX - 1) / PX * PX;
            for (int bi = 0; bi < nb; bi++) {
                const float *xb = x + (size_t)(b0 + bi) * Ci * H * W;
#pragma omp parallel for if (!serial)
                for (int c = 0; c < Ci; c++)
                    wino_input(V, vplane, tpad, (size_t)bi * Tb, xb, H, W, pt, pl, ty0, ty1, P.tw, c, c + 1);
            }
            /* zero what the products read past the pass's tiles and what the output transform reads past the
             * products' columns: those lanes are dropped, but stay finite */
            for (size_t r = 0; r < (size_t)16 * Ci; r++)
                memset(V + r * tpad + nt, 0, (tpad - nt) * sizeof(float));
            for (size_t r = 0; r < (size_t)16 * CoP; r++)
                memset(M + r * tpad + nq, 0, (tpad - nq) * sizeof(float));
#pragma omp parallel for schedule(dynamic) if (!serial)
            for (int task = 0; task < 16 * ncb; task++) {
                int xi = task / ncb, cb = task % ncb;
                const float *u = U + ((size_t)xi * ncb + cb) * Ci * FR;
                float *m = M + (size_t)xi * mplane + (size_t)cb * FR * tpad;
                for (size_t q0 = 0; q0 < nq; q0 += (size_t)PX)
                    isa->fwd(V + (size_t)xi * vplane + q0, tpad, Ci, offs0, 1, u, m + q0, tpad);
            }
#pragma omp parallel for collapse(2) if (!serial)
            for (int bi = 0; bi < nb; bi++)
                for (int co = 0; co < Co; co++) {
                    int b = b0 + bi;
                    size_t ob = ((size_t)b * Co + co) * HWo;
                    float add = (bias ? bias[co] : 0.0f) + (temb ? temb[(size_t)b * Co + co] : 0.0f);
                    wino_output(out + ob, res ? res + ob : NULL, M + (size_t)co * tpad, mplane,
                                (size_t)bi * Tb, P.Ho, P.Wo, ty0, ty1, P.tw, add, scale, accumulate);
                }
        }
    return 1;
}

/* Output channel co of one image's dout (Ho, Wo) to Z[xi * zplane + t0 + (ty - ty0) * tw + tx] = (A dY
 * A^T)[xi] of its 2x2 tiles in tile rows ty0 .. ty1 - 1 (zero past the image): the weight gradient's
 * transform of the output gradient. */
__attribute__((target("avx512f"))) static void wino_grad_output(float *Z, size_t zplane, size_t t0,
                                                                const float *dout, int Ho, int Wo, int ty0,
                                                                int ty1, int tw)
{
    wino_lanes L = wino_lanes_for(tw);
    for (int ty = ty0; ty < ty1; ty += L.pair ? 2 : 1)
        for (int tx0 = 0; tx0 < tw; tx0 += 16) {
            int n = tw - tx0 < 16 ? tw - tx0 : 16;
            int yb = 2 * ty, cb = 2 * tx0 + 16;
            if (L.pair) {
                n = ty + 1 < ty1 ? 2 * tw : tw;
                yb = 2 * ty + 2;
                cb = 0;
            }
            __m512 y[2][2];
            for (int i = 0; i < 2; i++) {
                __m512 a = row16(dout, Ho, Wo, 2 * ty + i, 2 * tx0, col_mask(Wo, 2 * tx0));
                __m512 b = row16(dout, Ho, Wo, yb + i, cb, col_mask(Wo, cb));
                y[i][0] = _mm512_permutex2var_ps(a, L.ev, b);
                y[i][1] = _mm512_permutex2var_ps(a, L.od, b);
            }
            __m512 r[4][2]; /* A dY */
            for (int j = 0; j < 2; j++) {
                r[0][j] = y[0][j];
                r[1][j] = _mm512_add_ps(y[0][j], y[1][j]);
                r[2][j] = _mm512_sub_ps(y[0][j], y[1][j]);
                r[3][j] = _mm512_sub_ps(_mm512_setzero_ps(), y[1][j]);
            }
            __mmask16 m = lanes(n);
            float *z = Z + t0 + (size_t)(ty - ty0) * tw + tx0;
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
    wino_plan P;
    if (!wino_plan_for(&P, B, H, W, pt, pl, pb, pr, 16))
        return 0;
    size_t tpad = P.tpad, vplane = (size_t)Ci * tpad, zplane = (size_t)Co * tpad;
    float *V = cpu_scratch(0, (size_t)16 * vplane * sizeof(float));
    float *Z = cpu_scratch(1, (size_t)16 * zplane * sizeof(float));
    float *dU = cpu_scratch(2, (size_t)16 * Co * Ci * sizeof(float));
    if (!V || !Z || !dU)
        return 0;
    memset(dU, 0, (size_t)16 * Co * Ci * sizeof(float));
    int serial = cpu_in_parallel() || (int64_t)Co * Ci * 16 * P.T * B < DCONV_PARALLEL_MIN;
    (void)serial; /* only the OpenMP pragmas read it */
    int HWo = P.Ho * P.Wo, ncb = (Co + WR - 1) / WR, nchunk = (Ci + WM - 1) / WM;
    for (int b0 = 0; b0 < B; b0 += P.group)
        for (int ty0 = 0; ty0 < P.th; ty0 += P.band) {
            int nb = B - b0 < P.group ? B - b0 : P.group;
            int ty1 = ty0 + P.band < P.th ? ty0 + P.band : P.th,
                Tb = (ty1 - ty0) * P.tw; /* tiles per image */
            size_t nt = (size_t)nb * Tb, nv = (nt + 15) / 16;
            for (int bi = 0; bi < nb; bi++) {
                const float *xb = x + (size_t)(b0 + bi) * Ci * H * W;
#pragma omp parallel for if (!serial)
                for (int c = 0; c < Ci; c++)
                    wino_input(V, vplane, tpad, (size_t)bi * Tb, xb, H, W, pt, pl, ty0, ty1, P.tw, c, c + 1);
            }
#pragma omp parallel for collapse(2) if (!serial)
            for (int bi = 0; bi < nb; bi++)
                for (int co = 0; co < Co; co++)
                    wino_grad_output(Z + (size_t)co * tpad, zplane, (size_t)bi * Tb,
                                     dout + ((size_t)(b0 + bi) * Co + co) * HWo, P.Ho, P.Wo, ty0, ty1, P.tw);
            /* tiles past the pass's add nothing: zero in both factors */
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
                    grow[r] =
                        Z + (size_t)xi * zplane + (size_t)(cb * WR + r < Co ? cb * WR + r : cb * WR) * tpad;
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
