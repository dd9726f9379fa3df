/* test_grad.c: every CPU op's backward (weights, bias, every input, the fused temb / residual / SiLU
 * paths) and a whole U-Net's gradients (with and without dropout) against central finite differences. */
#include "cpu/cpu.h"
#include "cpu/train.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

void conv2d_backward_naive(float *dinp, float *dw, float *db, float *dtemb, float *dres, const float *dout,
                           const float *inp, const float *w, float scale, int B, int Ci, int H, int W, int Co,
                           int k, int stride, int pt, int pl, int pb, int pr);
void attention_backward_naive(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, int B, int C, int HW, int heads);
void cpu_sgemm_portable(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc);

/* Gradients are checked on top of this value: a backward that assigns instead of accumulating fails. */
#define PREFILL 0.25f

static uint32_t seed_step;

static float *randn(int64_t n, float scale)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    rng_normal_fill(p, n, 1, 0, seed_step++, 777);
    for (int64_t i = 0; i < n; i++)
        p[i] *= scale;
    return p;
}

static float *filled(int64_t n, float v)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

/* ---- the finite-difference harness ------------------------------------------------------------ */

/* One op under test: forward writes out (n_out floats) from the tensors; backward accumulates the
 * gradients of sum(out * dout) into the grad arrays. */
typedef struct fd_tensor {
    const char *name;
    float *x, *grad; /* grad NULL: an input without gradient (not checked) */
    int64_t n;
} fd_tensor;

typedef struct fd_case {
    const char *name;
    void (*forward)(struct fd_case *c, float *out);
    void (*backward)(struct fd_case *c, const float *dout);
    fd_tensor t[6];
    int nt;
    int64_t n_out;
    int ip[12];
    float fp[2];
} fd_case;

static double loss_of(fd_case *c, float *out, const float *r)
{
    c->forward(c, out);
    double s = 0.0;
    for (int64_t i = 0; i < c->n_out; i++)
        s += (double)out[i] * r[i];
    return s;
}

/* Central differences with step h on up to max_pts elements of every tensor (all when fewer), the analytic
 * gradient passing when |an - fd| <= atol * gmax + rtol * |fd| (gmax: the tensor's largest gradient). */
static void fd_check(fd_case *c, float h, float atol, float rtol, int max_pts)
{
    float *out = malloc((size_t)c->n_out * sizeof(float));
    float *r = randn(c->n_out, 1.0f);
    for (int k = 0; k < c->nt; k++)
        if (c->t[k].grad)
            for (int64_t i = 0; i < c->t[k].n; i++)
                c->t[k].grad[i] = PREFILL;
    c->forward(c, out);
    c->backward(c, r);
    for (int k = 0; k < c->nt; k++) {
        fd_tensor *t = &c->t[k];
        if (!t->grad)
            continue;
        float gmax = 0.0f;
        for (int64_t i = 0; i < t->n; i++)
            gmax = fmaxf(gmax, fabsf(t->grad[i] - PREFILL));
        double worst = 0.0;
        int64_t worst_i = -1, pts = t->n < max_pts ? t->n : max_pts;
        float worst_an = 0.0f, worst_fd = 0.0f;
        int ok = 1;
        for (int64_t p = 0; p < pts; p++) {
            int64_t i = t->n <= max_pts ? p : (int64_t)((uint64_t)(p * 2654435761u + 17) % (uint64_t)t->n);
            float x0 = t->x[i];
            t->x[i] = x0 + h;
            double lp = loss_of(c, out, r);
            t->x[i] = x0 - h;
            double lm = loss_of(c, out, r);
            t->x[i] = x0;
            float fd = (float)((lp - lm) / (2.0 * h)), an = t->grad[i] - PREFILL;
            double err = fabs((double)an - fd), lim = atol * gmax + rtol * fabs(fd) + 1e-6;
            if (!(err <= lim))
                ok = 0;
            if (worst_i < 0 || err - lim > worst) {
                worst = err - lim;
                worst_i = i;
                worst_an = an;
                worst_fd = fd;
            }
        }
        CHECK(ok, "%s d%s: %lld of %lld points, max |grad| %.3g, worst [%lld] analytic %.6g fd %.6g", c->name,
              t->name, (long long)pts, (long long)t->n, (double)gmax, (long long)worst_i, (double)worst_an,
              (double)worst_fd);
        if (ok)
            printf("ok %s d%s: %lld points, max |grad| %.3g\n", c->name, t->name, (long long)pts,
                   (double)gmax);
    }
    free(out);
    free(r);
}

static void fd_free(fd_case *c)
{
    for (int k = 0; k < c->nt; k++) {
        free(c->t[k].x);
        free(c->t[k].grad);
    }
}

static void add_tensor(fd_case *c, const char *name, int64_t n, float scale, int want_grad)
{
    fd_tensor *t = &c->t[c->nt++];
    t->name = name;
    t->n = n;
    t->x = randn(n, scale);
    t->grad = want_grad ? filled(n, 0.0f) : NULL;
}

/* Tolerances. Ops linear in each input element (linear, conv, upsample, concat; in their weights too) have
 * exact central differences whatever the step: h = 1 leaves only fp32 rounding of the loss (~1e-6 of the
 * largest gradient). Nonlinear ops (SiLU, group norm, attention) with h = 1e-2 on O(1) inputs: truncation
 * h^2/6 f''' ~ 2e-5 and rounding 6e-8 |L| / h ~ 1e-5; a wrong term is off by O(1). */
#define LIN_H 1.0f
#define LIN_ATOL 1e-4f
#define LIN_RTOL 1e-4f
#define NL_H 1e-2f
#define NL_ATOL 2e-3f
#define NL_RTOL 1e-2f

/* ---- ops -------------------------------------------------------------------------------------- */

static void linear_fwd(fd_case *c, float *out)
{
    linear_forward(out, c->t[0].x, c->t[1].x, c->t[2].x, c->ip[0], c->ip[1], c->ip[2]);
}
static void linear_bwd(fd_case *c, const float *d)
{
    linear_backward(c->t[0].grad, c->t[1].grad, c->t[2].grad, d, c->t[0].x, c->t[1].x, c->ip[0], c->ip[1],
                    c->ip[2]);
}

static void test_linear(int B, int K, int M)
{
    char name[64];
    snprintf(name, sizeof name, "linear B%d K%d M%d", B, K, M);
    fd_case c = {.name = name, .forward = linear_fwd, .backward = linear_bwd, .ip = {B, K, M}};
    c.n_out = (int64_t)B * M;
    add_tensor(&c, "x", (int64_t)B * K, 1.0f, 1);
    add_tensor(&c, "w", (int64_t)M * K, 0.5f, 1);
    add_tensor(&c, "b", M, 0.5f, 1);
    fd_check(&c, LIN_H, LIN_ATOL, LIN_RTOL, 64);
    fd_free(&c);
}

static void silu_fwd(fd_case *c, float *out)
{
    silu_forward(out, c->t[0].x, c->t[0].n);
}
static void silu_bwd(fd_case *c, const float *d)
{
    silu_backward(c->t[0].grad, d, c->t[0].x, c->t[0].n);
}

static void test_silu(void)
{
    fd_case c = {.name = "silu 15", .forward = silu_fwd, .backward = silu_bwd, .n_out = 15};
    add_tensor(&c, "x", 15, 3.0f, 1);
    fd_check(&c, NL_H, NL_ATOL, NL_RTOL, 64);
    fd_free(&c);
}

/* conv: ip = B Ci H W Co k stride pt pl pb pr, has_temb (ip[11] bit 0), has_res (bit 1); fp0 scale.
 * Tensors: x, w, b, temb?, res?. */
static void conv_dims(const fd_case *c, int *Ho, int *Wo)
{
    *Ho = (c->ip[2] + c->ip[7] + c->ip[9] - c->ip[5]) / c->ip[6] + 1;
    *Wo = (c->ip[3] + c->ip[8] + c->ip[10] - c->ip[5]) / c->ip[6] + 1;
}
static fd_tensor *conv_opt(fd_case *c, int bit)
{
    if (!(c->ip[11] & bit))
        return NULL;
    return &c->t[bit == 1 ? 3 : (c->ip[11] & 1) ? 4 : 3];
}
static void conv_fwd(fd_case *c, float *out)
{
    const int *p = c->ip;
    fd_tensor *te = conv_opt(c, 1), *re = conv_opt(c, 2);
    conv2d_forward(out, c->t[0].x, c->t[1].x, c->t[2].x, te ? te->x : NULL, re ? re->x : NULL, c->fp[0], p[0],
                   p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]);
}
static void conv_bwd(fd_case *c, const float *d)
{
    const int *p = c->ip;
    fd_tensor *te = conv_opt(c, 1), *re = conv_opt(c, 2);
    conv2d_backward(c->t[0].grad, c->t[1].grad, c->t[2].grad, te ? te->grad : NULL, re ? re->grad : NULL, d,
                    c->t[0].x, c->t[1].x, c->fp[0], p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                    p[9], p[10]);
}

static void test_conv(int B, int Ci, int H, int W, int Co, int k, int stride, int pt, int pl, int pb, int pr,
                      int temb, int res, float scale)
{
    char name[128];
    snprintf(name, sizeof name, "conv B%d Ci%d %dx%d Co%d k%d s%d pad%d%d%d%d%s%s scale %g", B, Ci, H, W, Co,
             k, stride, pt, pl, pb, pr, temb ? " temb" : "", res ? " res" : "", (double)scale);
    fd_case c = {.name = name,
                 .forward = conv_fwd,
                 .backward = conv_bwd,
                 .ip = {B, Ci, H, W, Co, k, stride, pt, pl, pb, pr, (temb ? 1 : 0) | (res ? 2 : 0)},
                 .fp = {scale}};
    int Ho, Wo;
    conv_dims(&c, &Ho, &Wo);
    c.n_out = (int64_t)B * Co * Ho * Wo;
    add_tensor(&c, "x", (int64_t)B * Ci * H * W, 1.0f, 1);
    add_tensor(&c, "w", (int64_t)Co * Ci * k * k, 0.5f, 1);
    add_tensor(&c, "b", Co, 0.5f, 1);
    if (temb)
        add_tensor(&c, "temb", (int64_t)B * Co, 1.0f, 1);
    if (res)
        add_tensor(&c, "res", c.n_out, 1.0f, 1);
    fd_check(&c, LIN_H, LIN_ATOL, LIN_RTOL, 96);
    fd_free(&c);
}

/* DDPM_CPU_SIMD as the user ran the test: tests that pick a kernel set it back afterwards. */
static char *user_simd;

static void simd_restore(void)
{
    if (user_simd)
        setenv("DDPM_CPU_SIMD", user_simd, 1);
    else
        unsetenv("DDPM_CPU_SIMD");
}

/* The im2col + GEMM path (several image chunks, OpenBLAS or not; DDPM_CPU_SIMD=generic keeps the direct
 * kernels out) against the naive loop on a larger conv. */
static void test_conv_gemm_vs_naive(void)
{
    setenv("DDPM_CPU_SIMD", "generic", 1);
    int B = 9, Ci = 64, H = 24, W = 23, Co = 11, k = 3;
    int64_t nx = (int64_t)B * Ci * H * W, nw = (int64_t)Co * Ci * k * k, no = (int64_t)B * Co * H * W;
    float *x = randn(nx, 1.0f), *w = randn(nw, 0.1f), *d = randn(no, 1.0f);
    float *dx[2] = {filled(nx, PREFILL), filled(nx, PREFILL)}, *dw[2] = {filled(nw, 0.0f), filled(nw, 0.0f)};
    float *db[2] = {filled(Co, 0.0f), filled(Co, 0.0f)}, *dt[2] = {filled(B * Co, 0), filled(B * Co, 0)};
    float *o[2] = {malloc((size_t)no * sizeof(float)), malloc((size_t)no * sizeof(float))};
    float *bias = randn(Co, 1.0f);
    conv2d_forward_gemm(o[0], x, w, bias, d, d, 0.5f, B, Ci, H, W, Co, k, 1, 1, 1, 1, 1);
    conv2d_forward(o[1], x, w, bias, d, d, 0.5f, B, Ci, H, W, Co, k, 1, 1, 1, 1, 1);
    CHECK(test_close("conv forward gemm vs packed kernel", o[0], o[1], no, 1e-5f, 1e-5f),
          "conv forward gemm");
    conv2d_forward_gemm(o[0], x, w, NULL, NULL, NULL, 1.0f, B, Ci, H, W, Co, k, 2, 0, 0, 1, 1);
    conv2d_forward(o[1], x, w, NULL, NULL, NULL, 1.0f, B, Ci, H, W, Co, k, 2, 0, 0, 1, 1);
    int64_t no2 = (int64_t)B * Co * 12 * 11; /* Ho = (24 + 1 - 3) / 2 + 1, Wo = (23 + 1 - 3) / 2 + 1 */
    CHECK(test_close("conv forward gemm vs packed kernel, stride 2", o[0], o[1], no2, 1e-5f, 1e-5f),
          "conv forward gemm stride 2");
    free(o[0]);
    free(o[1]);
    free(bias);
    conv2d_backward(dx[0], dw[0], db[0], dt[0], NULL, d, x, w, 0.5f, B, Ci, H, W, Co, k, 1, 1, 1, 1, 1);
    conv2d_backward_naive(dx[1], dw[1], db[1], dt[1], NULL, d, x, w, 0.5f, B, Ci, H, W, Co, k, 1, 1, 1, 1, 1);
    CHECK(test_close("conv gemm vs naive: dx", dx[0], dx[1], nx, 1e-4f, 1e-4f), "conv dx");
    CHECK(test_close("conv gemm vs naive: dw", dw[0], dw[1], nw, 1e-3f, 1e-4f), "conv dw");
    CHECK(test_close("conv gemm vs naive: db", db[0], db[1], Co, 1e-3f, 1e-4f), "conv db");
    CHECK(test_close("conv gemm vs naive: dtemb", dt[0], dt[1], B * Co, 1e-3f, 1e-4f), "conv dtemb");
    simd_restore();
    for (int i = 0; i < 2; i++) {
        free(dx[i]);
        free(dw[i]);
        free(db[i]);
        free(dt[i]);
    }
    free(x);
    free(w);
    free(d);
}

/* The stride-1 direct kernels (conv_direct.c) under each instruction set against the packed forward and the
 * naive backward (with DDPM_CPU_SIMD=generic), on shapes that leave every block partial: channels not
 * multiples of the 8/6-channel forward or 3-channel weight-gradient blocks, K = Ci k k not a multiple of the
 * 9 input streams, grids that end mid-vector, asymmetric and zero padding, 1x1 images, padding up to k - 1;
 * for Winograd (3x3, 8+ channels each way, 192+ tiles in a group of images): single and paired tile rows,
 * partial last groups, large images in bands of tile rows. */
static void test_conv_direct_case(const char *simd, int B, int Ci, int H, int W, int Co, int k, int pt,
                                  int pl, int pb, int pr)
{
    int Ho = H + pt + pb - k + 1, Wo = W + pl + pr - k + 1;
    int64_t nx = (int64_t)B * Ci * H * W, nw = (int64_t)Co * Ci * k * k, no = (int64_t)B * Co * Ho * Wo;
    float *x = randn(nx, 1.0f), *w = randn(nw, 0.3f), *d = randn(no, 1.0f), *bias = randn(Co, 1.0f);
    float *temb = randn((int64_t)B * Co, 1.0f), *res = randn(no, 1.0f);
    float *o[2] = {filled(no, 9.0f), filled(no, 9.0f)};
    float *dx[2] = {filled(nx, PREFILL), filled(nx, PREFILL)},
          *dw[2] = {filled(nw, PREFILL), filled(nw, PREFILL)};
    char name[160];
    snprintf(name, sizeof name, "conv direct %s B%d Ci%d %dx%d Co%d k%d pad%d%d%d%d", simd, B, Ci, H, W, Co,
             k, pt, pl, pb, pr);
    setenv("DDPM_CPU_SIMD", simd, 1);
    conv2d_forward_gemm(o[0], x, w, bias, temb, res, 0.7f, B, Ci, H, W, Co, k, 1, pt, pl, pb, pr);
    conv2d_backward(dx[0], dw[0], NULL, NULL, NULL, d, x, w, 0.7f, B, Ci, H, W, Co, k, 1, pt, pl, pb, pr);
    setenv("DDPM_CPU_SIMD", "generic", 1); /* the references: the portable packed kernel and plain loops */
    conv2d_forward(o[1], x, w, bias, temb, res, 0.7f, B, Ci, H, W, Co, k, 1, pt, pl, pb, pr);
    conv2d_backward_naive(dx[1], dw[1], NULL, NULL, NULL, d, x, w, 0.7f, B, Ci, H, W, Co, k, 1, pt, pl, pb,
                          pr);
    simd_restore();
    char what[200];
    snprintf(what, sizeof what, "%s: out", name);
    CHECK(test_close(what, o[0], o[1], no, 1e-5f, 1e-5f), "conv direct out");
    snprintf(what, sizeof what, "%s: dx", name);
    CHECK(test_close(what, dx[0], dx[1], nx, 1e-5f, 1e-5f), "conv direct dx");
    snprintf(what, sizeof what, "%s: dw", name);
    /* dw sums B Ho Wo products in float on both sides: past 2000 terms the tolerance grows with the count */
    float dw_atol = 1e-4f * fmaxf(1.0f, (float)B * Ho * Wo / 2000.0f);
    CHECK(test_close(what, dw[0], dw[1], nw, dw_atol, 1e-5f), "conv direct dw");
    float *all[] = {x, w, d, bias, temb, res, o[0], o[1], dx[0], dx[1], dw[0], dw[1]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        free(all[i]);
}

static void test_conv_direct(void)
{
    static const char *const simd[] = {"avx2", "direct", "native"}; /* native: Winograd for 3x3 on AVX-512 */
    for (int s = 0; s < 3; s++) {
        test_conv_direct_case(simd[s], 3, 5, 7, 9, 13, 3, 1, 1, 1, 1);
        test_conv_direct_case(simd[s], 2, 13, 5, 3, 7, 1, 0, 0, 0, 0);
        test_conv_direct_case(simd[s], 1, 3, 1, 1, 17, 3, 1, 1, 1, 1);
        test_conv_direct_case(simd[s], 2, 1, 11, 6, 1, 3, 0, 2, 1, 0);
        test_conv_direct_case(simd[s], 1, 2, 6, 5, 4, 5, 2, 1, 0, 3);
        test_conv_direct_case(simd[s], 2, 4, 28, 28, 9, 3, 1, 1, 1, 1);
        test_conv_direct_case(simd[s], 5, 17, 7, 7, 10, 3, 1, 1, 1, 1);
        test_conv_direct_case(simd[s], 13, 17, 7, 7, 10, 3, 1, 1, 1,
                              1);                                       /* Winograd: groups of 12 images, 1 */
        test_conv_direct_case(simd[s], 2, 3, 4, 5, 2, 1, 1, 2, 0, 1);   /* padding past k - 1 */
        test_conv_direct_case(simd[s], 3, 8, 14, 14, 8, 3, 1, 1, 1, 1); /* too few tiles for Winograd */
        test_conv_direct_case(simd[s], 4, 8, 14, 14, 8, 3, 1, 1, 1, 1); /* Winograd: tile rows in pairs */
        test_conv_direct_case(simd[s], 2, 8, 28, 28, 9, 3, 1, 1, 1, 1); /* one tile row per vector */
        test_conv_direct_case(simd[s], 4, 9, 5, 37, 11, 3, 1, 1, 1, 1); /* tile rows of 19: two vectors */
        test_conv_direct_case(simd[s], 20, 8, 7, 7, 12, 3, 0, 1, 2, 0); /* 12 tiles: groups of 16 and 4 */
        test_conv_direct_case(simd[s], 1, 8, 100, 99, 9, 3, 1, 1, 1,
                              1); /* 2500 tiles: bands of 40, 10 rows */
        test_conv_direct_case(simd[s], 1, 8, 600, 16, 8, 3, 1, 1, 1, 1); /* bands of 256 paired rows, 44 */
    }
}

/* groupnorm: ip = B C HW groups silu; fp0 eps. Tensors x, gamma, beta. */
static void gn_fwd(fd_case *c, float *out)
{
    groupnorm_forward(out, c->t[0].x, c->t[1].x, c->t[2].x, c->ip[0], c->ip[1], c->ip[2], c->ip[3], c->fp[0],
                      c->ip[4]);
}
/* ip[5]: pass the forward's output (the exp-free SiLU derivative) */
static void gn_bwd(fd_case *c, const float *d)
{
    float *out = NULL;
    if (c->ip[5]) {
        out = malloc((size_t)c->n_out * sizeof(float));
        gn_fwd(c, out);
    }
    groupnorm_backward(c->t[0].grad, c->t[1].grad, c->t[2].grad, d, c->t[0].x, out, c->t[1].x, c->t[2].x,
                       c->ip[0], c->ip[1], c->ip[2], c->ip[3], c->fp[0], c->ip[4]);
    free(out);
}

static void test_groupnorm(int B, int C, int HW, int groups, int silu, int with_out)
{
    char name[96];
    snprintf(name, sizeof name, "groupnorm B%d C%d HW%d groups %d%s%s", B, C, HW, groups, silu ? " silu" : "",
             with_out ? " (from output)" : "");
    fd_case c = {.name = name,
                 .forward = gn_fwd,
                 .backward = gn_bwd,
                 .ip = {B, C, HW, groups, silu, with_out},
                 .fp = {1e-5f}};
    c.n_out = (int64_t)B * C * HW;
    add_tensor(&c, "x", c.n_out, 1.0f, 1);
    add_tensor(&c, "gamma", C, 1.0f, 1);
    add_tensor(&c, "beta", C, 0.5f, 1);
    for (int i = 0; i < C; i++)
        c.t[1].x[i] += 1.0f;
    fd_check(&c, NL_H, NL_ATOL, NL_RTOL, 96);
    fd_free(&c);
}

/* attention: ip = B C HW heads, ip[4]: the backward takes the softmax saved by attention_forward_gemm.
 * Tensors q, k, v. */
static void attn_fwd(fd_case *c, float *out)
{
    attention_forward(out, c->t[0].x, c->t[1].x, c->t[2].x, c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}
static void attn_bwd(fd_case *c, const float *d)
{
    float *probs = NULL, *out = NULL;
    if (c->ip[4]) {
        probs = malloc((size_t)c->ip[0] * c->ip[3] * c->ip[2] * c->ip[2] * sizeof(float));
        out = malloc((size_t)c->n_out * sizeof(float));
        attention_forward_gemm(out, probs, c->t[0].x, c->t[1].x, c->t[2].x, c->ip[0], c->ip[1], c->ip[2],
                               c->ip[3]);
    }
    attention_backward(c->t[0].grad, c->t[1].grad, c->t[2].grad, d, probs, c->t[0].x, c->t[1].x, c->t[2].x,
                       c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
    free(probs);
    free(out);
}
static void attn_bwd_naive(fd_case *c, const float *d)
{
    attention_backward_naive(c->t[0].grad, c->t[1].grad, c->t[2].grad, d, c->t[0].x, c->t[1].x, c->t[2].x,
                             c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}

/* naive: the reference backward; saved: the backward on the forward's softmax */
static void test_attention(int B, int C, int HW, int heads, int naive, int saved)
{
    char name[96];
    snprintf(name, sizeof name, "attention%s B%d C%d HW%d heads %d",
             naive   ? " (naive)"
             : saved ? " (saved)"
                     : "",
             B, C, HW, heads);
    fd_case c = {.name = name,
                 .forward = attn_fwd,
                 .backward = naive ? attn_bwd_naive : attn_bwd,
                 .ip = {B, C, HW, heads, saved}};
    c.n_out = (int64_t)B * C * HW;
    add_tensor(&c, "q", c.n_out, 1.0f, 1);
    add_tensor(&c, "k", c.n_out, 1.0f, 1);
    add_tensor(&c, "v", c.n_out, 1.0f, 1);
    fd_check(&c, NL_H, NL_ATOL, NL_RTOL, 96);
    fd_free(&c);
}

/* The training forward's GEMM attention (saving the softmax) against the inference kernel (blocks of query
 * rows), and their softmax against a softmax computed here in double. */
static void test_attention_forward_gemm(int B, int C, int HW, int heads)
{
    int64_t n = (int64_t)B * C * HW, np = (int64_t)B * heads * HW * HW;
    float *q = randn(n, 1.0f), *k = randn(n, 1.0f), *v = randn(n, 1.0f);
    float *o[2] = {malloc((size_t)n * sizeof(float)), malloc((size_t)n * sizeof(float))};
    float *probs = malloc((size_t)np * sizeof(float)), *want = malloc((size_t)np * sizeof(float));
    attention_forward_gemm(o[0], probs, q, k, v, B, C, HW, heads);
    attention_forward(o[1], q, k, v, B, C, HW, heads);
    char what[96];
    snprintf(what, sizeof what, "attention forward gemm vs kernel B%d C%d HW%d heads %d", B, C, HW, heads);
    CHECK(test_close(what, o[0], o[1], n, 1e-5f, 1e-5f), "%s", what);
    int d = C / heads;
    for (int64_t bh = 0; bh < (int64_t)B * heads; bh++) {
        const float *qh = q + bh * d * HW, *kh = k + bh * d * HW;
        for (int i = 0; i < HW; i++) {
            double s[256], mx = -1e300, z = 0.0; /* HW <= 256 */
            for (int j = 0; j < HW; j++) {
                s[j] = 0.0;
                for (int c = 0; c < d; c++)
                    s[j] += (double)qh[c * HW + i] * kh[c * HW + j];
                s[j] /= sqrt((double)d);
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int j = 0; j < HW; j++)
                z += exp(s[j] - mx);
            for (int j = 0; j < HW; j++)
                want[(bh * HW + i) * HW + j] = (float)(exp(s[j] - mx) / z);
        }
    }
    snprintf(what, sizeof what, "attention softmax B%d C%d HW%d heads %d", B, C, HW, heads);
    CHECK(test_close(what, probs, want, np, 1e-5f, 1e-4f), "%s", what);
    free(q);
    free(k);
    free(v);
    free(o[0]);
    free(o[1]);
    free(probs);
    free(want);
}

static void up_fwd(fd_case *c, float *out)
{
    upsample_forward(out, c->t[0].x, c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}
static void up_bwd(fd_case *c, const float *d)
{
    upsample_backward(c->t[0].grad, d, c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}

static void test_upsample(int B, int C, int H, int W)
{
    char name[64];
    snprintf(name, sizeof name, "upsample B%d C%d %dx%d", B, C, H, W);
    fd_case c = {.name = name, .forward = up_fwd, .backward = up_bwd, .ip = {B, C, H, W}};
    c.n_out = (int64_t)B * C * 4 * H * W;
    add_tensor(&c, "x", (int64_t)B * C * H * W, 1.0f, 1);
    fd_check(&c, LIN_H, LIN_ATOL, LIN_RTOL, 96);
    fd_free(&c);
}

static void cat_fwd(fd_case *c, float *out)
{
    concat_forward(out, c->t[0].x, c->t[1].x, c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}
static void cat_bwd(fd_case *c, const float *d)
{
    concat_backward(c->t[0].grad, c->t[1].grad, d, c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
}

static void test_concat(int B, int Ca, int Cb, int HW)
{
    char name[64];
    snprintf(name, sizeof name, "concat B%d %d+%d HW%d", B, Ca, Cb, HW);
    fd_case c = {.name = name, .forward = cat_fwd, .backward = cat_bwd, .ip = {B, Ca, Cb, HW}};
    c.n_out = (int64_t)B * (Ca + Cb) * HW;
    add_tensor(&c, "a", (int64_t)B * Ca * HW, 1.0f, 1);
    add_tensor(&c, "b", (int64_t)B * Cb * HW, 1.0f, 1);
    fd_check(&c, LIN_H, LIN_ATOL, LIN_RTOL, 96);
    fd_free(&c);
}

/* cblas (when built with it) against the portable GEMM, every transpose combination, odd sizes. */
static void test_sgemm(void)
{
    int M = 37, N = 300, K = 131;
    float *A = randn((int64_t)M * K, 1.0f), *Bm = randn((int64_t)K * N, 1.0f);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float *C0 = randn((int64_t)M * N, 1.0f), *C1 = malloc((size_t)M * N * sizeof(float));
            memcpy(C1, C0, (size_t)M * N * sizeof(float));
            int lda = ta ? M : K, ldb = tb ? K : N;
            cpu_sgemm(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.5f, C0, N);
            cpu_sgemm_portable(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.5f, C1, N);
            char what[64];
            snprintf(what, sizeof what, "sgemm %s vs portable ta%d tb%d", cpu_sgemm_backend(), ta, tb);
            CHECK(test_close(what, C0, C1, (int64_t)M * N, 1e-4f, 1e-4f), "%s", what);
            free(C0);
            free(C1);
        }
    /* the portable GEMM itself against a double loop */
    float *C = malloc((size_t)M * N * sizeof(float)), *R = malloc((size_t)M * N * sizeof(float));
    cpu_sgemm_portable(0, 0, M, N, K, 1.0f, A, K, Bm, N, 0.0f, C, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++)
                s += (double)A[(size_t)i * K + k] * Bm[(size_t)k * N + j];
            R[(size_t)i * N + j] = (float)s;
        }
    CHECK(test_close("portable sgemm vs double loop", C, R, (int64_t)M * N, 1e-4f, 1e-4f), "portable sgemm");
    free(C);
    free(R);
    free(A);
    free(Bm);
}

/* ---- the whole U-Net -------------------------------------------------------------------------- */

typedef struct unet_fd {
    const ddpm_graph *g;
    cpu_trainer *tr;
    float **w;
    const float *x, *t;
    uint64_t seed;
} unet_fd;

static double unet_loss(unet_fd *u, const float *r, int64_t n_out)
{
    const float *out;
    ddpm_result res = cpu_train_forward(u->tr, (const float *const *)u->w, u->x, u->t, u->seed, &out);
    if (res != DDPM_OK)
        return NAN;
    double s = 0.0;
    for (int64_t i = 0; i < n_out; i++)
        s += (double)out[i] * r[i];
    return s;
}

/* Gradients of sum(out * r) w.r.t. pts elements of every param tensor, by central differences with step
 * h = 2e-2 (weights are O(0.1 .. 1)). The forward is fp32: each output carries a rounding error of up to
 * ~eps32 |out|, so the loss difference is only known to floor = eps32 sum|out r| / (2h) (~1e-3 here): that
 * is the absolute slack, plus 2e-3 of the tensor's largest gradient and 2e-2 relative for the h^2
 * truncation through GN / SiLU / softmax. Gradients that are exactly zero (to_k.bias: softmax ignores a
 * per-row constant) can only be checked to that floor; test_train_step compares them with torch. */
static void test_unet_grads(const char *fixture, float dropout, int pts)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path(fixture), &m);
    CHECK(r == DDPM_OK, "load %s: %s", fixture, ddpm_last_error());
    if (r != DDPM_OK)
        return;
    const ddpm_graph *g = &m->graph;
    int B = dropout > 0.0f ? 3 : 2; /* 3: shards of 2 and 1 images on two threads */
    int64_t n_in = B * value_numel(&g->values[g->input]), n_out = B * value_numel(&g->values[g->output]);
    float *x = randn(n_in, 1.0f), t[3] = {17.0f, 640.0f, 999.0f}, *rr = randn(n_out, 1.0f);
    cpu_trainer *tr = NULL;
    r = cpu_train_create(g, B, dropout, &tr);
    CHECK(r == DDPM_OK, "cpu_train_create: %s", ddpm_last_error());
    float **grads = calloc((size_t)g->n_params, sizeof *grads);
    for (int i = 0; i < g->n_params; i++)
        grads[i] = filled(g->params[i].numel, PREFILL);
    unet_fd u = {g, tr, m->weights, x, t, 99};
    const float *out;
    r = cpu_train_forward(tr, (const float *const *)m->weights, x, t, u.seed, &out);
    r = r == DDPM_OK ? cpu_train_backward(tr, (const float *const *)m->weights, rr, grads) : r;
    CHECK(r == DDPM_OK, "train forward/backward: %s", ddpm_last_error());
    /* the forward without dropout is the inference forward */
    if (dropout == 0.0f) {
        float *ref = malloc((size_t)n_out * sizeof(float));
        cpu_unet_forward(g, (const float *const *)m->weights, B, x, t, ref);
        char what[96]; /* the training forward's convolutions are GEMMs: equal up to rounding */
        snprintf(what, sizeof what, "%s: training forward vs inference forward", fixture);
        CHECK(test_close(what, out, ref, n_out, 1e-5f, 1e-5f), "%s", what);
        free(ref);
    } else { /* with dropout: differs from inference, reproducible from the seed */
        float *ref = malloc((size_t)n_out * sizeof(float)), *again = malloc((size_t)n_out * sizeof(float));
        cpu_unet_forward(g, (const float *const *)m->weights, B, x, t, ref);
        memcpy(again, out, (size_t)n_out * sizeof(float));
        cpu_train_forward(tr, (const float *const *)m->weights, x, t, u.seed, &out);
        CHECK(memcmp(again, out, (size_t)n_out * sizeof(float)) == 0, "%s: dropout reproducible", fixture);
        CHECK(memcmp(ref, out, (size_t)n_out * sizeof(float)) != 0, "%s: dropout changes the output",
              fixture);
        cpu_train_forward(tr, (const float *const *)m->weights, x, t, u.seed + 1, &out);
        CHECK(memcmp(again, out, (size_t)n_out * sizeof(float)) != 0, "%s: another seed, another mask",
              fixture);
        free(ref);
        free(again);
    }
#ifdef _OPENMP
    if (omp_get_max_threads() > 1) { /* one shard per thread: the same step on one thread (one shard) */
        int nthreads = omp_get_max_threads();
        omp_set_num_threads(1);
        cpu_trainer *one = NULL;
        float **g1 = calloc((size_t)g->n_params, sizeof *g1);
        const float *out1;
        for (int i = 0; i < g->n_params; i++)
            g1[i] = filled(g->params[i].numel, PREFILL);
        r = cpu_train_create(g, B, dropout, &one);
        r = r == DDPM_OK ? cpu_train_forward(one, (const float *const *)m->weights, x, t, u.seed, &out1) : r;
        CHECK(r == DDPM_OK, "one-shard trainer: %s", ddpm_last_error());
        const float *outn;
        cpu_train_forward(tr, (const float *const *)m->weights, x, t, u.seed, &outn);
        char what[128];
        snprintf(what, sizeof what, "%s: output with %d shards vs 1", fixture, nthreads < B ? nthreads : B);
        CHECK(test_close(what, outn, out1, n_out, 1e-6f, 1e-5f), "%s", what);
        r = cpu_train_backward(one, (const float *const *)m->weights, rr, g1);
        /* summed in another order: rounding relative to the largest gradient (gradients that are zero up
         * to rounding, like to_k.bias, differ in every digit) */
        int far = 0;
        float gmax = 0.0f;
        for (int p = 0; p < g->n_params; p++)
            for (int64_t i = 0; i < g->params[p].numel; i++)
                gmax = fmaxf(gmax, fabsf(grads[p][i] - PREFILL));
        for (int p = 0; p < g->n_params; p++) {
            for (int64_t i = 0; i < g->params[p].numel; i++)
                if (!(fabsf(g1[p][i] - grads[p][i]) <= 1e-5f * gmax + 1e-3f * fabsf(grads[p][i] - PREFILL))) {
                    if (far++ < 3)
                        printf("  %s[%lld]: %.8g (1 shard) vs %.8g, max |grad| %.3g\n", g->params[p].name,
                               (long long)i, (double)(g1[p][i] - PREFILL), (double)(grads[p][i] - PREFILL),
                               (double)gmax);
                }
        }
        CHECK(r == DDPM_OK && far == 0, "%s: gradients with %d shards vs 1: %d elements differ", fixture,
              nthreads < B ? nthreads : B, far);
        printf("%s: gradients with %d shards vs 1 shard: %d elements differ by more than 1e-5 x %.3g\n",
               fixture, nthreads < B ? nthreads : B, far, (double)gmax);
        for (int i = 0; i < g->n_params; i++)
            free(g1[i]);
        free(g1);
        cpu_train_free(one);
        omp_set_num_threads(nthreads);
    }
#endif
#ifdef _OPENMP
    /* The thousands of tiny finite-difference forwards run on one thread: on a busy 2-core machine each
     * parallel region can wait out a scheduler time slice, which made this test 20x slower. */
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    double S = 0.0;
    for (int64_t i = 0; i < n_out; i++)
        S += fabs((double)out[i] * rr[i]);
    const double floor = 3 * 6e-8 * S / (2 * 2e-2); /* x3: the intermediate roundings too */
    int bad = 0, checked = 0;
    for (int p = 0; p < g->n_params; p++) {
        float *w = m->weights[p];
        int64_t n = g->params[p].numel;
        float gmax = 0.0f;
        for (int64_t i = 0; i < n; i++)
            gmax = fmaxf(gmax, fabsf(grads[p][i] - PREFILL));
        for (int s = 0; s < pts && s < n; s++) {
            int64_t i =
                n <= pts ? s : (int64_t)(((uint64_t)s * 2654435761u + (uint64_t)p * 40503u) % (uint64_t)n);
            const float h = 2e-2f;
            float w0 = w[i];
            w[i] = w0 + h;
            double lp = unet_loss(&u, rr, n_out);
            w[i] = w0 - h;
            double lm = unet_loss(&u, rr, n_out);
            w[i] = w0;
            float fd = (float)((lp - lm) / (2.0 * h)), an = grads[p][i] - PREFILL;
            double err = fabs((double)an - fd), lim = 2e-3 * gmax + 2e-2 * fabs(fd) + floor;
            checked++;
            if (!(err <= lim)) {
                if (bad++ < 10)
                    printf("  %s %s[%lld]: analytic %.6g fd %.6g (max |grad| %.3g)\n", fixture,
                           g->params[p].name, (long long)i, (double)an, (double)fd, (double)gmax);
            }
        }
    }
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    CHECK(bad == 0, "%s U-Net (dropout %g): %d of %d parameter gradients off finite differences", fixture,
          (double)dropout, bad, checked);
    printf(
        "%s U-Net (dropout %g): %d parameter elements over %d tensors checked, %d off (noise floor %.2g)\n",
        fixture, (double)dropout, checked, g->n_params, bad, floor);
    for (int i = 0; i < g->n_params; i++)
        free(grads[i]);
    free(grads);
    cpu_train_free(tr);
    free(x);
    free(rr);
    ddpm_model_free(m);
}

static void test_bad_args(void)
{
    cpu_trainer *tr = (cpu_trainer *)1;
    CHECK(cpu_train_create(NULL, 1, 0.0f, &tr) != DDPM_OK && tr == NULL, "NULL graph refused");
    ddpm_model *m = NULL;
    if (ddpm_model_load(test_fixture_path("unet_b.safetensors"), &m) != DDPM_OK)
        return;
    CHECK(cpu_train_create(&m->graph, 0, 0.0f, &tr) != DDPM_OK, "batch 0 refused");
    CHECK(cpu_train_create(&m->graph, 1, 1.0f, &tr) != DDPM_OK, "dropout 1 refused");
    CHECK(cpu_train_create(&m->graph, 1, -0.1f, &tr) != DDPM_OK, "negative dropout refused");
    CHECK(cpu_train_create(&m->graph, 1, 0.0f, &tr) == DDPM_OK, "a good trainer");
    float dummy[1] = {0};
    float *grads[1] = {dummy};
    CHECK(cpu_train_backward(tr, (const float *const *)m->weights, dummy, grads) != DDPM_OK,
          "backward before any forward refused");
    cpu_train_free(tr);
    ddpm_model_free(m);
}

int main(void)
{
    if (getenv("DDPM_CPU_SIMD"))
        user_simd = strdup(getenv("DDPM_CPU_SIMD"));
    test_sgemm();
    test_linear(3, 5, 3);
    test_linear(1, 1, 1);
    test_linear(2, 13, 7);
    test_silu();
    /* channels 1, 3, 5; images 1x1 and 3x5; stride 2 with both paddings; temb, residual, scale */
    test_conv(2, 3, 3, 5, 5, 3, 1, 1, 1, 1, 1, 1, 1, 0.7f);
    test_conv(2, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 0, 0, 1.0f);
    test_conv(1, 5, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 0, 1.0f);
    test_conv(2, 5, 5, 7, 3, 3, 2, 0, 0, 1, 1, 0, 0, 1.0f);
    test_conv(2, 3, 5, 7, 5, 3, 2, 1, 1, 1, 1, 0, 1, 1.0f);
    test_conv(3, 5, 3, 5, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0.5f);
    test_conv(2, 3, 3, 5, 5, 1, 1, 0, 0, 0, 0, 1, 1, 1.0f / 1.4f);
    test_conv_gemm_vs_naive();
    test_conv_direct();
    test_groupnorm(2, 6, 15, 3, 0, 0);
    test_groupnorm(2, 6, 15, 3, 1, 0);
    test_groupnorm(2, 6, 15, 3, 1, 1);
    test_groupnorm(1, 5, 15, 5, 1, 1);
    test_groupnorm(3, 3, 1, 1, 0, 1);
    test_groupnorm(2, 1, 15, 1, 1, 0);
    test_groupnorm(2, 1, 15, 1, 1, 1);
    test_attention(2, 4, 15, 1, 0, 0);
    test_attention(2, 6, 7, 2, 0, 0);
    test_attention(1, 3, 1, 1, 0, 0);
    test_attention(1, 5, 15, 1, 0, 0);
    test_attention(2, 6, 7, 2, 1, 0);
    test_attention(2, 6, 7, 2, 0, 1);
    test_attention(1, 5, 15, 1, 0, 1);
    test_attention_forward_gemm(3, 6, 37, 2);
    test_attention_forward_gemm(2, 64, 196, 1);
    test_upsample(2, 3, 3, 5);
    test_upsample(1, 1, 1, 1);
    test_concat(2, 1, 3, 15);
    test_concat(1, 5, 1, 1);
    test_bad_args();
    test_unet_grads("unet_a.safetensors", 0.0f, 3);
    test_unet_grads("unet_c.safetensors", 0.3f, 3);
    free(user_simd);
    return test_summary("grad");
}
