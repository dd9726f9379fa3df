/* ops_backward.c: the CPU backward of every graph op with weights or inputs to differentiate (linear,
 * SiLU, conv2d with its fused temb / residual / scale, group norm with its fused SiLU, attention,
 * upsample, concat). Gradients accumulate (+=); NULL means not wanted. NCHW float32. */
#include "cpu.h"
#include "simd.h"
#include "threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

/* ---- linear, SiLU ----------------------------------------------------------------------------- */

void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                     int B, int K, int M)
{
    // dinp (B,K), dw (M,K), db (M), dout (B,M), inp (B,K), w (M,K)
    int64_t work = (int64_t)B * M * K;
    (void)work; /* read by the OpenMP clauses only */
    if (dinp) {
#pragma omp parallel for if (work > (1 << 18))
        for (int bi = 0; bi < B; bi++) {
            float *dx = dinp + (size_t)bi * K;
            const float *g = dout + (size_t)bi * M;
            for (int m = 0; m < M; m++) {
                const float *wr = w + (size_t)m * K;
                float gm = g[m];
                for (int kk = 0; kk < K; kk++)
                    dx[kk] += gm * wr[kk];
            }
        }
    }
    if (dw || db) {
#pragma omp parallel for if (work > (1 << 18))
        for (int m = 0; m < M; m++) {
            float *dwr = dw ? dw + (size_t)m * K : NULL;
            float sb = 0.0f;
            for (int bi = 0; bi < B; bi++) {
                float gm = dout[(size_t)bi * M + m];
                sb += gm;
                if (dwr) {
                    const float *x = inp + (size_t)bi * K;
                    for (int kk = 0; kk < K; kk++)
                        dwr[kk] += gm * x[kk];
                }
            }
            if (db)
                db[m] += sb;
        }
    }
}

/* d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x) */
static inline float silu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

void silu_backward(float *dinp, const float *dout, const float *inp, int64_t n)
{
    if (!dinp)
        return;
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        dinp[i] += dout[i] * silu_grad(inp[i]);
}

/* ---- conv2d ----------------------------------------------------------------------------------- */

/* The straightforward backward, serial: the reference the GEMM path is tested against and its fallback
 * when scratch memory cannot be had. Same arguments as conv2d_backward. */
void conv2d_backward_naive(float *dinp, float *dw, float *db, float *dtemb, float *dres, const float *dout,
                           const float *inp, const float *w, float scale, int B, int Ci, int H, int W, int Co,
                           int k, int stride, int pt, int pl, int pb, int pr);

void conv2d_backward_naive(float *dinp, float *dw, float *db, float *dtemb, float *dres, const float *dout,
                           const float *inp, const float *w, float scale, int B, int Ci, int H, int W, int Co,
                           int k, int stride, int pt, int pl, int pb, int pr)
{
    int Ho = (H + pt + pb - k) / stride + 1, Wo = (W + pl + pr - k) / stride + 1;
    if (Ho <= 0 || Wo <= 0)
        return;
    for (int bi = 0; bi < B; bi++)
        for (int co = 0; co < Co; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    size_t o = (((size_t)bi * Co + co) * Ho + oy) * Wo + ox;
                    float g = dout[o] * scale;
                    if (db)
                        db[co] += g;
                    if (dtemb)
                        dtemb[(size_t)bi * Co + co] += g;
                    if (dres)
                        dres[o] += g;
                    for (int ci = 0; ci < Ci; ci++)
                        for (int ky = 0; ky < k; ky++) {
                            int iy = oy * stride - pt + ky;
                            if (iy < 0 || iy >= H)
                                continue;
                            for (int kx = 0; kx < k; kx++) {
                                int ix = ox * stride - pl + kx;
                                if (ix < 0 || ix >= W)
                                    continue;
                                size_t xi = (((size_t)bi * Ci + ci) * H + iy) * W + ix;
                                size_t wi = (((size_t)co * Ci + ci) * k + ky) * k + kx;
                                if (dw)
                                    dw[wi] += g * inp[xi];
                                if (dinp)
                                    dinp[xi] += g * w[wi];
                            }
                        }
                }
}

/* The im2col matrix of nb images: col (Ci*k*k, nb*Ho*Wo), row (ci, ky, kx), column (image, pixel). */
static void im2col(float *col, const float *x, int nb, int Ci, int H, int W, int Ho, int Wo, int k,
                   int stride, int pt, int pl)
{
    int K = Ci * k * k, N = Ho * Wo;
    size_t L = (size_t)nb * N;
#pragma omp parallel for collapse(2) if ((int64_t)K * nb * N > 65536)
    for (int r = 0; r < K; r++) {
        for (int bi = 0; bi < nb; bi++) {
            int ci = r / (k * k), ky = r / k % k, kx = r % k;
            const float *xc = x + ((size_t)bi * Ci + ci) * H * W;
            float *c = col + (size_t)r * L + (size_t)bi * N;
            /* columns whose window column ix = ox * stride - pl + kx is inside the image: [ox0, ox1) */
            int ox0 = 0, ox1 = Wo;
            while (ox0 < Wo && ox0 * stride - pl + kx < 0)
                ox0++;
            while (ox1 > ox0 && (ox1 - 1) * stride - pl + kx >= W)
                ox1--;
            for (int oy = 0; oy < Ho; oy++) {
                int iy = oy * stride - pt + ky;
                float *crow = c + (size_t)oy * Wo;
                if (iy < 0 || iy >= H) {
                    memset(crow, 0, (size_t)Wo * sizeof(float));
                    continue;
                }
                const float *xr = xc + (size_t)iy * W;
                int off = kx - pl; /* ix = ox * stride + off, >= 0 from ox0 on */
                for (int ox = 0; ox < ox0; ox++)
                    crow[ox] = 0.0f;
                if (stride == 1 && ox1 > ox0)
                    memcpy(crow + ox0, xr + ox0 + off, (size_t)(ox1 - ox0) * sizeof(float));
                else
                    for (int ox = ox0; ox < ox1; ox++)
                        crow[ox] = xr[ox * stride + off];
                for (int ox = ox1; ox < Wo; ox++)
                    crow[ox] = 0.0f;
            }
        }
    }
}

/* dx += col2im(col): the adjoint of im2col, split by (image, input channel) so no two threads write
 * the same element. */
static void col2im_add(float *dx, const float *col, int nb, int Ci, int H, int W, int Ho, int Wo, int k,
                       int stride, int pt, int pl)
{
    int N = Ho * Wo;
    size_t L = (size_t)nb * N;
#pragma omp parallel for collapse(2) if ((int64_t)Ci * k * k * nb * N > 65536)
    for (int bi = 0; bi < nb; bi++) {
        for (int ci = 0; ci < Ci; ci++) {
            float *xc = dx + ((size_t)bi * Ci + ci) * H * W;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    const float *c = col + (size_t)((ci * k + ky) * k + kx) * L + (size_t)bi * N;
                    int ox0 = 0, ox1 = Wo; /* as in im2col */
                    while (ox0 < Wo && ox0 * stride - pl + kx < 0)
                        ox0++;
                    while (ox1 > ox0 && (ox1 - 1) * stride - pl + kx >= W)
                        ox1--;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride - pt + ky;
                        if (iy < 0 || iy >= H)
                            continue;
                        float *xr = xc + (size_t)iy * W;
                        const float *crow = c + (size_t)oy * Wo;
                        int off = kx - pl;
                        if (stride == 1) {
                            float *xo = xr + ox0 + off;
                            const float *co = crow + ox0;
                            for (int j = 0; j < ox1 - ox0; j++)
                                xo[j] += co[j];
                        } else {
                            for (int ox = ox0; ox < ox1; ox++)
                                xr[ox * stride + off] += crow[ox];
                        }
                    }
                }
        }
    }
}

/* The sum of g[0 .. n-1]: 16 float lanes (they vectorize) added up in double. */
static double plane_sum(const float *g, int n)
{
    float lane[16] = {0};
    int p = 0;
    for (; p + 16 <= n; p += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += g[p + j];
    double s = 0.0;
    for (int j = 0; j < 16; j++)
        s += lane[j];
    for (; p < n; p++)
        s += g[p];
    return s;
}

/* Images per GEMM: the im2col chunk (K x nb*N floats) stays within this many floats (16 MiB). */
#define CONV_BWD_CHUNK_FLOATS ((int64_t)4 << 20)

void conv2d_backward(float *dinp, float *dw, float *db, float *dtemb, float *dres, const float *dout,
                     const float *inp, const float *w, float scale, int B, int Ci, int H, int W, int Co,
                     int k, int stride, int pt, int pl, int pb, int pr)
{
    // dinp (B,Ci,H,W), dw (Co,Ci,k,k), db (Co), dtemb (B,Co), dres (B,Co,Ho,Wo), dout (B,Co,Ho,Wo),
    // inp (B,Ci,H,W), w (Co,Ci,k,k). G = dout * scale is the gradient of the sum before the scale.
    int Ho = (H + pt + pb - k) / stride + 1, Wo = (W + pl + pr - k) / stride + 1;
    if (Ho <= 0 || Wo <= 0 || B <= 0 || Co <= 0)
        return;
    int N = Ho * Wo, K = Ci * k * k;
    int64_t total = (int64_t)B * Co * N;
    if (db) {
#pragma omp parallel for if (total > 65536)
        for (int co = 0; co < Co; co++) {
            double s = 0.0;
            for (int bi = 0; bi < B; bi++)
                s += plane_sum(dout + ((size_t)bi * Co + co) * N, N);
            db[co] += (float)s * scale;
        }
    }
    if (dtemb) {
#pragma omp parallel for if (total > 65536)
        for (int64_t bc = 0; bc < (int64_t)B * Co; bc++)
            dtemb[bc] += (float)plane_sum(dout + (size_t)bc * N, N) * scale;
    }
    if (dres) {
#pragma omp parallel for if (total > 65536)
        for (int64_t i = 0; i < total; i++)
            dres[i] += dout[i] * scale;
    }
    if ((!dw && !dinp) || K <= 0)
        return;
    if (stride == 1) {
        int done = conv2d_direct_backward(dinp, dw, dout, inp, w, scale, B, Ci, H, W, Co, k, pt, pl, pb, pr);
        if (done == 1)
            return;
        if (done == -1) /* dw is in: the im2col path below adds dinp only */
            dw = NULL;
    }
    /* dinp of a stride-1 k > 1 conv is the convolution of G with the flipped, transposed kernel Wt
     * (Ci, Co, k, k) and padding k - 1 - p: one GEMM with Co k k inner terms on the im2col of dout, then a
     * plain add, instead of W^T G (only Co inner terms) and a k x k scatter (col2im). */
    int flip = dinp && stride == 1 && k > 1;
    int HWi = H * W, Kt = Co * k * k;
    int64_t per_image = (int64_t)(K > Co ? K : Co) * N;
    if (flip && (int64_t)Kt * HWi > per_image)
        per_image = (int64_t)Kt * HWi;
    int bc = (int)(CONV_BWD_CHUNK_FLOATS / per_image);
    bc = bc < 1 ? 1 : bc > B ? B : bc;
    float *col = cpu_scratch(0, (size_t)per_image * bc * sizeof(float));
    float *G = cpu_scratch(1, (size_t)Co * N * bc * sizeof(float));
    float *Wt = flip ? cpu_scratch(2, (size_t)Ci * Kt * sizeof(float)) : NULL;
    float *Y = flip ? cpu_scratch(3, (size_t)Ci * HWi * bc * sizeof(float)) : NULL;
    if (!col || !G || (flip && (!Wt || !Y))) {
        conv2d_backward_naive(dinp, dw, NULL, NULL, NULL, dout, inp, w, scale, B, Ci, H, W, Co, k, stride, pt,
                              pl, pb, pr);
        return;
    }
    if (flip)
        for (int ci = 0; ci < Ci; ci++)
            for (int co = 0; co < Co; co++)
                for (int t = 0; t < k * k; t++) /* Wt[ci][co][ky][kx] = W[co][ci][k-1-ky][k-1-kx] */
                    Wt[((size_t)ci * Co + co) * k * k + t] =
                        w[((size_t)co * Ci + ci) * k * k + (k * k - 1 - t)];
    for (int b0 = 0; b0 < B; b0 += bc) {
        int nb = B - b0 < bc ? B - b0 : bc;
        int L = nb * N;
        /* G (Co, nb*N): the chunk's output gradient, images side by side per channel */
#pragma omp parallel for collapse(2) if ((int64_t)Co * L > 65536)
        for (int co = 0; co < Co; co++)
            for (int bi = 0; bi < nb; bi++) {
                const float *g = dout + ((size_t)(b0 + bi) * Co + co) * N;
                float *d = G + (size_t)co * L + (size_t)bi * N;
                for (int p = 0; p < N; p++)
                    d[p] = g[p] * scale;
            }
        const float *x = inp + (size_t)b0 * Ci * H * W;
        if (dw) {
            im2col(col, x, nb, Ci, H, W, Ho, Wo, k, stride, pt, pl);
            cpu_sgemm(0, 1, Co, K, L, 1.0f, G, L, col, L, 1.0f, dw, K); /* dW += G col^T */
        }
        if (flip) {
            int Li = nb * HWi;
            im2col(col, dout + (size_t)b0 * Co * N, nb, Co, Ho, Wo, H, W, k, 1, k - 1 - pt, k - 1 - pl);
            cpu_sgemm(0, 0, Ci, Li, Kt, scale, Wt, Kt, col, Li, 0.0f, Y, Li); /* dX = conv(dout, Wt) */
#pragma omp parallel for collapse(2) if ((int64_t)Ci * Li > 65536)
            for (int bi = 0; bi < nb; bi++)
                for (int ci = 0; ci < Ci; ci++) {
                    float *dx = dinp + ((size_t)(b0 + bi) * Ci + ci) * HWi;
                    const float *y = Y + (size_t)ci * Li + (size_t)bi * HWi;
                    for (int i = 0; i < HWi; i++)
                        dx[i] += y[i];
                }
        } else if (dinp) {
            cpu_sgemm(1, 0, K, L, Co, 1.0f, w, K, G, L, 0.0f, col, L); /* dcol = W^T G */
            col2im_add(dinp + (size_t)b0 * Ci * H * W, col, nb, Ci, H, W, Ho, Wo, k, stride, pt, pl);
        }
    }
}

/* The forward as explicit GEMMs on im2col chunks (the backward's layout): out = (W col + b + temb + res)
 * * scale. Faster than conv2d_forward's packed kernel when channel counts are small (packing dominates
 * there); the training forward uses it. Same arguments as conv2d_forward. */
void conv2d_forward_gemm(float *out, const float *inp, const float *w, const float *b, const float *temb,
                         const float *res, float scale, int B, int Ci, int H, int W, int Co, int k,
                         int stride, int pt, int pl, int pb, int pr)
{
    int Ho = (H + pt + pb - k) / stride + 1, Wo = (W + pl + pr - k) / stride + 1;
    if (Ho <= 0 || Wo <= 0 || B <= 0 || Co <= 0)
        return;
    if (stride == 1 &&
        conv2d_direct_forward(out, inp, w, b, temb, res, scale, B, Ci, H, W, Co, k, pt, pl, pb, pr, 1))
        return;
    int N = Ho * Wo, K = Ci * k * k;
    int64_t per_image = (int64_t)(K > Co ? K : Co) * N;
    int bc = (int)(CONV_BWD_CHUNK_FLOATS / per_image);
    bc = bc < 1 ? 1 : bc > B ? B : bc;
    float *col = cpu_scratch(0, (size_t)K * N * bc * sizeof(float));
    float *Y = cpu_scratch(1, (size_t)Co * N * bc * sizeof(float));
    if (!col || !Y || K <= 0) {
        conv2d_forward(out, inp, w, b, temb, res, scale, B, Ci, H, W, Co, k, stride, pt, pl, pb, pr);
        return;
    }
    for (int b0 = 0; b0 < B; b0 += bc) {
        int nb = B - b0 < bc ? B - b0 : bc;
        int L = nb * N;
        im2col(col, inp + (size_t)b0 * Ci * H * W, nb, Ci, H, W, Ho, Wo, k, stride, pt, pl);
        cpu_sgemm(0, 0, Co, L, K, 1.0f, w, K, col, L, 0.0f, Y, L);
#pragma omp parallel for collapse(2) if ((int64_t)Co * L > 65536)
        for (int bi = 0; bi < nb; bi++)
            for (int co = 0; co < Co; co++) {
                size_t ob = ((size_t)(b0 + bi) * Co + co) * N;
                const float *y = Y + (size_t)co * L + (size_t)bi * N;
                float add = (b ? b[co] : 0.0f) + (temb ? temb[(size_t)(b0 + bi) * Co + co] : 0.0f);
                float *o = out + ob;
                if (res) {
                    const float *r = res + ob;
                    for (int p = 0; p < N; p++)
                        o[p] = (y[p] + add + r[p]) * scale;
                } else {
                    for (int p = 0; p < N; p++)
                        o[p] = (y[p] + add) * scale;
                }
            }
    }
}

/* ---- group norm ------------------------------------------------------------------------------- */

/* The backward in three plain passes (statistics, dgamma / dbeta by channel, dx by group), recomputing
 * dy in each: the reference for groupnorm_backward and its fallback. Same arguments. */
void groupnorm_backward_naive(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                              const float *gamma, const float *beta, int B, int C, int HW, int groups,
                              float eps, int silu);

void groupnorm_backward_naive(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                              const float *gamma, const float *beta, int B, int C, int HW, int groups,
                              float eps, int silu)
{
    // dinp (B,C,HW), dgamma dbeta (C), dout inp (B,C,HW), gamma beta (C) or NULL.
    // y = xhat gamma + beta (then SiLU); dy = dout (* silu'(y)); dgamma += sum dy xhat, dbeta += sum dy;
    // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) over the group, dxhat = dy gamma.
    if (groups <= 0 || C % groups || B <= 0)
        return;
    int cg = C / groups;
    int64_t n = (int64_t)cg * HW;
    int big = (int64_t)B * C * HW > 32768;
    (void)big; /* read by the OpenMP clauses only */
    float *stat = malloc((size_t)B * groups * 2 * sizeof(float));
    if (stat) {
#pragma omp parallel for if (big)
        for (int64_t bg = 0; bg < (int64_t)B * groups; bg++)
            groupnorm_stats(&stat[2 * bg], &stat[2 * bg + 1], inp + (size_t)bg * n, n, eps);
    }
    if (dgamma || dbeta) {
#pragma omp parallel for if (big)
        for (int c = 0; c < C; c++) {
            int g = c / cg;
            float ga = gamma ? gamma[c] : 1.0f, be = beta ? beta[c] : 0.0f;
            double sg = 0.0, sb = 0.0;
            for (int bi = 0; bi < B; bi++) {
                float mean, rstd;
                if (stat) {
                    mean = stat[2 * ((size_t)bi * groups + g)];
                    rstd = stat[2 * ((size_t)bi * groups + g) + 1];
                } else {
                    groupnorm_stats(&mean, &rstd, inp + ((size_t)bi * groups + g) * n, n, eps);
                }
                const float *x = inp + ((size_t)bi * C + c) * HW;
                const float *d = dout + ((size_t)bi * C + c) * HW;
                for (int i = 0; i < HW; i++) {
                    float xh = (x[i] - mean) * rstd;
                    float dy = silu ? d[i] * silu_grad(xh * ga + be) : d[i];
                    sg += (double)dy * xh;
                    sb += dy;
                }
            }
            if (dgamma)
                dgamma[c] += (float)sg;
            if (dbeta)
                dbeta[c] += (float)sb;
        }
    }
    if (dinp) {
#pragma omp parallel for if (big)
        for (int64_t bg = 0; bg < (int64_t)B * groups; bg++) {
            int g = (int)(bg % groups);
            size_t base = (size_t)bg * n;
            float mean, rstd;
            if (stat) {
                mean = stat[2 * bg];
                rstd = stat[2 * bg + 1];
            } else {
                groupnorm_stats(&mean, &rstd, inp + base, n, eps);
            }
            double s1 = 0.0, s2 = 0.0;
            for (int c = 0; c < cg; c++) {
                int ch = g * cg + c;
                float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
                const float *x = inp + base + (size_t)c * HW, *d = dout + base + (size_t)c * HW;
                for (int i = 0; i < HW; i++) {
                    float xh = (x[i] - mean) * rstd;
                    float dxh = (silu ? d[i] * silu_grad(xh * ga + be) : d[i]) * ga;
                    s1 += dxh;
                    s2 += (double)dxh * xh;
                }
            }
            float m1 = (float)(s1 / (double)n), m2 = (float)(s2 / (double)n);
            for (int c = 0; c < cg; c++) {
                int ch = g * cg + c;
                float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
                const float *x = inp + base + (size_t)c * HW, *d = dout + base + (size_t)c * HW;
                float *dx = dinp + base + (size_t)c * HW;
                for (int i = 0; i < HW; i++) {
                    float xh = (x[i] - mean) * rstd;
                    float dxh = (silu ? d[i] * silu_grad(xh * ga + be) : d[i]) * ga;
                    dx[i] += rstd * (dxh - m1 - xh * m2);
                }
            }
        }
    }
    free(stat);
}

/* a where mask is all ones, b where it is 0, on the bits: a float select GCC can vectorise even when a
 * is a quotient (a conditional division might trap, so it keeps that loop scalar). */
static inline float select_bits(uint32_t mask, float a, float b)
{
    uint32_t ab, bb;
    memcpy(&ab, &a, sizeof ab);
    memcpy(&bb, &b, sizeof bb);
    uint32_t r = (ab & mask) | (bb & ~mask);
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

/* dy = dout silu'(y) at one element, y = (x - mean) sc + be recomputed exactly as groupnorm_forward computes
 * it, sigmoid(y) from the forward's output o = y sigmoid(y): o / y, or 1/2 + y/4 where |y| is too small for
 * the quotient (the Taylor error y^3 / 48 is then below 1e-10). Vectorises (the select picks between values
 * computed either way). */
static inline float silu_dy_from_out(float d, float x, float o, float mean, float sc, float be)
{
    float y = (x - mean) * sc + be;
    uint32_t yb;
    memcpy(&yb, &y, sizeof yb);
    uint32_t big = 0u - (uint32_t)((yb & 0x7fffffffu) > 0x3a83126fu); /* |y| > 1e-3 */
    float sg = select_bits(big, o / select_bits(big, y, 1.0f), 0.5f + 0.25f * y);
    return d * sg * (1.0f + y * (1.0f - sg));
}

/* the same without the forward's output: sigmoid(y) from vexpf */
static inline float silu_dy_from_exp(float d, float x, float mean, float sc, float be)
{
    float y = (x - mean) * sc + be;
    float sg = 1.0f / (1.0f + vexpf(-y));
    return d * sg * (1.0f + y * (1.0f - sg));
}

/* dy of one channel (len floats, o: the forward's output or NULL) into dy, with *sdx = sum dy (x - mean)
 * and *sd = sum dy as gn_channel_sums takes them (same lanes, same order), in one pass. */
CPU_SIMD_CLONES static void gn_silu_dy_sums(float *restrict dy, const float *restrict d,
                                            const float *restrict x, const float *restrict o, int len,
                                            float mean, float sc, float be, float *sdx, float *sd)
{
    float lx[16] = {0}, ld[16] = {0};
    int i = 0;
    if (o) {
        for (; i + 16 <= len; i += 16)
            for (int l = 0; l < 16; l++) {
                float v = silu_dy_from_out(d[i + l], x[i + l], o[i + l], mean, sc, be);
                dy[i + l] = v;
                lx[l] += v * (x[i + l] - mean);
                ld[l] += v;
            }
    } else {
        for (; i + 16 <= len; i += 16)
            for (int l = 0; l < 16; l++) {
                float v = silu_dy_from_exp(d[i + l], x[i + l], mean, sc, be);
                dy[i + l] = v;
                lx[l] += v * (x[i + l] - mean);
                ld[l] += v;
            }
    }
    float a = 0.0f, b = 0.0f;
    for (; i < len; i++) {
        float v =
            o ? silu_dy_from_out(d[i], x[i], o[i], mean, sc, be) : silu_dy_from_exp(d[i], x[i], mean, sc, be);
        dy[i] = v;
        a += v * (x[i] - mean);
        b += v;
    }
    for (int l = 0; l < 16; l++) {
        a += lx[l];
        b += ld[l];
    }
    *sdx = a;
    *sd = b;
}

/* *sdx = sum dy (x - mean), *sd = sum dy over len floats, in 16 partial sums (vectorised) */
static inline void gn_channel_sums(const float *dy, const float *x, int len, float mean, float *sdx,
                                   float *sd)
{
    float lx[16] = {0}, ld[16] = {0};
    int i = 0;
    for (; i + 16 <= len; i += 16)
        for (int l = 0; l < 16; l++) {
            lx[l] += dy[i + l] * (x[i + l] - mean);
            ld[l] += dy[i + l];
        }
    float a = 0.0f, b = 0.0f;
    for (; i < len; i++) {
        a += dy[i] * (x[i] - mean);
        b += dy[i];
    }
    for (int l = 0; l < 16; l++) {
        a += lx[l];
        b += ld[l];
    }
    *sdx = a;
    *sd = b;
}

/* One group of one image (cg channels of HW floats, every pointer at the group's start; out, gamma, beta
 * may be NULL): part gets (sum dy xhat, sum dy) per channel, dx (unless NULL) its gradient; dyb: cg HW
 * floats of scratch for dy when silu. */
CPU_SIMD_CLONES static void groupnorm_backward_group(float *dx, float *part, float *dyb, const float *dout,
                                                     const float *x, const float *out, const float *gamma,
                                                     const float *beta, int cg, int HW, float eps, int silu)
{
    int64_t n = (int64_t)cg * HW;
    float mean, rstd;
    groupnorm_stats(&mean, &rstd, x, n, eps);
    double s1 = 0.0, s2 = 0.0; /* sum dxhat, sum dxhat xhat */
    for (int c = 0; c < cg; c++) {
        float ga = gamma ? gamma[c] : 1.0f, be = beta ? beta[c] : 0.0f;
        size_t off = (size_t)c * HW;
        float pg, pb;
        if (silu) /* dy kept for the dx pass */
            gn_silu_dy_sums(dyb + off, dout + off, x + off, out ? out + off : NULL, HW, mean, rstd * ga, be,
                            &pg, &pb);
        else
            gn_channel_sums(dout + off, x + off, HW, mean, &pg, &pb);
        pg *= rstd;
        part[2 * c] = pg;
        part[2 * c + 1] = pb;
        s1 += (double)pb * ga;
        s2 += (double)pg * ga;
    }
    if (!dx)
        return;
    float m1 = (float)(s1 / (double)n), m2 = (float)(s2 / (double)n);
    for (int c = 0; c < cg; c++) {
        float ga = gamma ? gamma[c] : 1.0f;
        size_t off = (size_t)c * HW;
        const float *xc = x + off, *dy = silu ? dyb + off : dout + off;
        float *dxc = dx + off;
        float a = rstd * ga, b = -rstd * rstd * m2, c0 = -rstd * m1;
        for (int i = 0; i < HW; i++)
            dxc[i] += dy[i] * a + ((xc[i] - mean) * b + c0);
    }
}

void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *out, const float *gamma, const float *beta, int B, int C, int HW,
                        int groups, float eps, int silu)
{
    // As groupnorm_backward_naive, in one task per (item, group): statistics as the forward's, dy computed
    // once per element (into a per-thread buffer with the SiLU), then dx in one pass; per-(item, channel)
    // sums for dgamma / dbeta added up afterwards in item order: no atomics, the same result for any
    // thread count. With xhat = (x - mean) rstd and dxhat = dy gamma:
    // dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) = dy a + (x - mean) b + c per channel.
    if (groups <= 0 || C % groups || B <= 0)
        return;
    int cg = C / groups;
    int64_t n = (int64_t)cg * HW;
    int big = (int64_t)B * C * HW > 32768, nt = big ? cpu_max_threads() : 1;
    float *part = cpu_scratch(0, (size_t)B * C * 2 * sizeof(float)); /* (item, channel): sum dy xhat, dy */
    float *dyall = silu ? cpu_scratch(1, (size_t)nt * n * sizeof(float)) : NULL; /* n per thread */
    if (!part || (silu && !dyall)) {
        groupnorm_backward_naive(dinp, dgamma, dbeta, dout, inp, gamma, beta, B, C, HW, groups, eps, silu);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nt) if (big)
    for (int64_t bg = 0; bg < (int64_t)B * groups; bg++) {
        int g = (int)(bg % groups);
        size_t base = (size_t)bg * n;
        groupnorm_backward_group(dinp ? dinp + base : NULL, part + 2 * (size_t)bg * cg,
                                 silu ? dyall + (size_t)cpu_thread_num() * n : NULL, dout + base, inp + base,
                                 out ? out + base : NULL, gamma ? gamma + g * cg : NULL,
                                 beta ? beta + g * cg : NULL, cg, HW, eps, silu);
    }
    for (int c = 0; c < C; c++) {
        float sg = 0.0f, sb = 0.0f;
        for (int bi = 0; bi < B; bi++) {
            sg += part[2 * ((size_t)bi * C + c)];
            sb += part[2 * ((size_t)bi * C + c) + 1];
        }
        if (dgamma)
            dgamma[c] += sg;
        if (dbeta)
            dbeta[c] += sb;
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

/* Scores of query i against every key of one head, recomputed: s_j = sc q[:, i] . k[:, j]. */
static float attn_score(const float *q, const float *k, int d, int HW, int i, int j, float sc)
{
    float s = 0.0f;
    for (int c = 0; c < d; c++)
        s += q[(size_t)c * HW + i] * k[(size_t)c * HW + j];
    return s * sc;
}

/* The backward without scratch memory, serial: every probability recomputed where it is needed. The
 * reference for the GEMM path and its fallback. Same arguments as attention_backward. */
void attention_backward_naive(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, int B, int C, int HW, int heads);

void attention_backward_naive(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, int B, int C, int HW, int heads)
{
    int d = C / heads;
    float sc = 1.0f / sqrtf((float)d);
    for (int64_t bh = 0; bh < (int64_t)B * heads; bh++) {
        size_t off = (size_t)bh * d * HW;
        const float *qh = q + off, *kh = k + off, *vh = v + off, *go = dout + off;
        for (int i = 0; i < HW; i++) {
            float mx = -INFINITY, z = 0.0f;
            for (int j = 0; j < HW; j++)
                mx = fmaxf(mx, attn_score(qh, kh, d, HW, i, j, sc));
            for (int j = 0; j < HW; j++)
                z += expf(attn_score(qh, kh, d, HW, i, j, sc) - mx);
            float D = 0.0f; /* sum_j P_ij dP_ij, dP_ij = dout[:, i] . v[:, j] */
            for (int j = 0; j < HW; j++) {
                float p = expf(attn_score(qh, kh, d, HW, i, j, sc) - mx) / z, dp = 0.0f;
                for (int c = 0; c < d; c++)
                    dp += go[(size_t)c * HW + i] * vh[(size_t)c * HW + j];
                D += p * dp;
            }
            for (int j = 0; j < HW; j++) {
                float p = expf(attn_score(qh, kh, d, HW, i, j, sc) - mx) / z, dp = 0.0f;
                for (int c = 0; c < d; c++)
                    dp += go[(size_t)c * HW + i] * vh[(size_t)c * HW + j];
                float ds = p * (dp - D) * sc;
                for (int c = 0; c < d; c++) {
                    if (dq)
                        dq[off + (size_t)c * HW + i] += ds * kh[(size_t)c * HW + j];
                    if (dk)
                        dk[off + (size_t)c * HW + j] += ds * qh[(size_t)c * HW + i];
                    if (dv)
                        dv[off + (size_t)c * HW + j] += p * go[(size_t)c * HW + i];
                }
            }
        }
    }
}

/* dS = P (dP - rowsum(P dP)) sc over n x n, in place of dP */
CPU_SIMD_CLONES static void softmax_rows_backward(float *dP, const float *P, int n, float sc)
{
    for (int i = 0; i < n; i++) {
        const float *p = P + (size_t)i * n;
        float *dp = dP + (size_t)i * n;
        float D = dot16(p, dp, n);
        for (int j = 0; j < n; j++)
            dp[j] = p[j] * (dp[j] - D) * sc;
    }
}

void attention_forward_gemm(float *out, float *probs, const float *q, const float *k, const float *v, int B,
                            int C, int HW, int heads)
{
    // out q k v (B,C,HW), probs (B,heads,HW,HW) or NULL; per (item, head): P = softmax_rows(sc Q^T K),
    // O = V P^T, on the task's thread
    if (!probs) {
        attention_forward(out, q, k, v, B, C, HW, heads);
        return;
    }
    if (heads <= 0 || C % heads || HW <= 0 || B <= 0)
        return;
    int d = C / heads;
    float sc = 1.0f / sqrtf((float)d);
    int64_t tasks = (int64_t)B * heads;
#pragma omp parallel for schedule(dynamic) if (tasks > 1 && tasks * HW * HW * d > 65536)
    for (int64_t bh = 0; bh < tasks; bh++) {
        size_t off = (size_t)bh * d * HW;
        float *P = probs + (size_t)bh * HW * HW;
        cpu_sgemm(1, 0, HW, HW, d, sc, q + off, HW, k + off, HW, 0.0f, P, HW);
        softmax_rows(P, HW, HW);
        cpu_sgemm(0, 1, d, HW, HW, 1.0f, v + off, HW, P, HW, 0.0f, out + off, HW);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs,
                        const float *q, const float *k, const float *v, int B, int C, int HW, int heads)
{
    // dq dk dv dout q k v (B,C,HW), probs (B,heads,HW,HW) or NULL; per head h (channels h*d ..), with Q, K,
    // V, dO its (d, HW) blocks: P = softmax_rows(sc Q^T K) (or the forward's); dV += dO P; dP = dO^T V; dS =
    // P (dP - rowsum(P dP)) sc; dQ += K dS^T; dK += Q dS. One (item, head) per task, each writing only its
    // own blocks; the GEMMs inside run on the task's thread. Scratch: two HW x HW matrices per thread
    // (cpu_scratch slots 0, 1).
    if (heads <= 0 || C % heads || HW <= 0 || B <= 0)
        return;
    int d = C / heads;
    float sc = 1.0f / sqrtf((float)d);
    int64_t tasks = (int64_t)B * heads;
#pragma omp parallel if (tasks > 1 && tasks * HW * HW * d > 65536)
    {
        float *scratch = probs ? NULL : cpu_scratch(0, (size_t)HW * HW * sizeof(float));
        float *dP = cpu_scratch(1, (size_t)HW * HW * sizeof(float));
#pragma omp for schedule(dynamic)
        for (int64_t bh = 0; bh < tasks; bh++) {
            size_t off = (size_t)bh * d * HW;
            const float *P = probs ? probs + (size_t)bh * HW * HW : scratch;
            if (!P || !dP) { /* no scratch: the naive loop on this (item, head) */
                attention_backward_naive(dq ? dq + off : NULL, dk ? dk + off : NULL, dv ? dv + off : NULL,
                                         dout + off, q + off, k + off, v + off, 1, d, HW, 1);
                continue;
            }
            const float *qh = q + off, *kh = k + off, *vh = v + off, *go = dout + off;
            if (!probs) {
                cpu_sgemm(1, 0, HW, HW, d, sc, qh, HW, kh, HW, 0.0f, scratch, HW); /* scores (HW, HW) */
                softmax_rows(scratch, HW, HW);
            }
            if (dv)
                cpu_sgemm(0, 0, d, HW, HW, 1.0f, go, HW, P, HW, 1.0f, dv + off, HW);
            if (!dq && !dk)
                continue;
            cpu_sgemm(1, 0, HW, HW, d, 1.0f, go, HW, vh, HW, 0.0f, dP, HW);
            softmax_rows_backward(dP, P, HW, sc);
            if (dq)
                cpu_sgemm(0, 1, d, HW, HW, 1.0f, kh, HW, dP, HW, 1.0f, dq + off, HW);
            if (dk)
                cpu_sgemm(0, 0, d, HW, HW, 1.0f, qh, HW, dP, HW, 1.0f, dk + off, HW);
        }
    }
}

/* ---- upsample, concat ------------------------------------------------------------------------- */

void upsample_backward(float *dinp, const float *dout, int B, int C, int H, int W)
{
    // dinp (B,C,H,W), dout (B,C,2H,2W): each input pixel gets its four copies' gradients
    if (!dinp)
        return;
    int64_t planes = (int64_t)B * C;
#pragma omp parallel for if (planes * H * W > (1 << 16))
    for (int64_t pc = 0; pc < planes; pc++) {
        float *dx = dinp + (size_t)pc * H * W;
        const float *g = dout + (size_t)pc * 4 * H * W;
        for (int y = 0; y < H; y++) {
            const float *r0 = g + (size_t)(2 * y) * 2 * W, *r1 = r0 + 2 * W;
            for (int x = 0; x < W; x++)
                dx[(size_t)y * W + x] += r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1];
        }
    }
}

void concat_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb, int HW)
{
    // da (B,Ca,HW), db (B,Cb,HW), dout (B,Ca+Cb,HW)
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for if ((int64_t)B * (Ca + Cb) * HW > (1 << 16))
    for (int bi = 0; bi < B; bi++) {
        const float *g = dout + (size_t)bi * (na + nb);
        if (da)
            for (size_t i = 0; i < na; i++)
                da[(size_t)bi * na + i] += g[i];
        if (db)
            for (size_t i = 0; i < nb; i++)
                db[(size_t)bi * nb + i] += g[na + i];
    }
}
