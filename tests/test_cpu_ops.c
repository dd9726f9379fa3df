/* test_cpu_ops.c: every CPU op against PyTorch references (tests/fixtures/ops.safetensors, made by
 * tests/torch_ref/ops.py), the fast conv against the naive one on random shapes, and conv throughput. */
#include "cpu/cpu.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Defined in src/cpu/ops.c: the plain convolution kept as the reference for the fast path. */
void conv2d_forward_naive(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k,
                          int stride, int pt, int pl, int pb, int pr);

/* fp32 against fp32 torch: a few ulp of the output scale, plus relative slack for large values. */
#define ATOL 1e-5f
#define RTOL 1e-4f
/* time_embed: sin(t f) with t up to 999. torch's vectorised exp is within 1 ulp but not always correctly
 * rounded, and 1 ulp of f moves t f by up to 999 * 2^-23 = 1.2e-4, plus 0.5 ulp (3e-5) for the product. */
#define ATOL_TIME_EMBED 2e-4f

static const char *const op_names[] = {
#define X(id, name) name,
    DDPM_OPS(X)
#undef X
};

static st_file fx;

/* DDPM_CPU_SIMD=generic makes conv2d_forward use its portable kernel; the user's own value comes back. */
static char *user_simd;
static void use_portable_kernel(int on)
{
    if (on)
        setenv("DDPM_CPU_SIMD", "generic", 1);
    else if (user_simd)
        setenv("DDPM_CPU_SIMD", user_simd, 1);
    else
        unsetenv("DDPM_CPU_SIMD");
}

/* Fixture tensor "<cname>.<role>" as float32 (malloc'ed); a size other than want is a failure (NULL). */
static float *tensor(const char *cname, const char *role, int64_t want)
{
    char key[256];
    snprintf(key, sizeof key, "%s.%s", cname, role);
    int64_t n = 0;
    float *t = test_tensor(&fx, key, &n);
    CHECK(n == want, "%s has %lld elements, the case says %lld", key, (long long)n, (long long)want);
    if (n != want) {
        free(t);
        return NULL;
    }
    return t;
}

static float *alloc_floats(int64_t n)
{
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    if (!p) {
        fprintf(stderr, "FAIL out of memory\n");
        exit(1);
    }
    return p;
}

static int compare_tol(const char *cname, const char *what, const float *got, const float *want, int64_t n,
                       float atol)
{
    char label[300];
    snprintf(label, sizeof label, "%s %s", cname, what);
    return test_close(label, got, want, n, atol, RTOL);
}

static int compare(const char *cname, const char *what, const float *got, const float *want, int64_t n)
{
    return compare_tol(cname, what, got, want, n, ATOL);
}

/* Parameters of a case: up to 16 numbers after the op name. */
typedef struct {
    double v[16];
    int n;
} params;

static int iparam(const params *p, int i)
{
    return (int)p->v[i];
}

static void run_time_embed(const char *cname, const params *p)
{
    int B = iparam(p, 0), C = iparam(p, 1), flip = iparam(p, 3);
    float shift = (float)p->v[2];
    float *t = tensor(cname, "t", B), *want = tensor(cname, "out", (int64_t)B * C);
    float *got = alloc_floats((int64_t)B * C);
    if (t && want) {
        time_embed_forward(got, t, B, C, shift, flip);
        compare_tol(cname, "time_embed", got, want, (int64_t)B * C, ATOL_TIME_EMBED);
    }
    free(t), free(want), free(got);
}

static void run_linear(const char *cname, const params *p)
{
    int B = iparam(p, 0), K = iparam(p, 1), M = iparam(p, 2);
    float *x = tensor(cname, "x", (int64_t)B * K), *w = tensor(cname, "w", (int64_t)M * K);
    float *b = tensor(cname, "b", M), *want = tensor(cname, "out", (int64_t)B * M);
    float *got = alloc_floats((int64_t)B * M);
    if (x && w && b && want) {
        linear_forward(got, x, w, b, B, K, M);
        compare(cname, "linear", got, want, (int64_t)B * M);
    }
    free(x), free(w), free(b), free(want), free(got);
}

static void run_silu(const char *cname, const params *p)
{
    int64_t n = (int64_t)p->v[0];
    float *x = tensor(cname, "x", n), *want = tensor(cname, "out", n), *got = alloc_floats(n);
    if (x && want) {
        silu_forward(got, x, n);
        compare(cname, "silu", got, want, n);
    }
    free(x), free(want), free(got);
}

static void run_conv2d(const char *cname, const params *p)
{
    int B = iparam(p, 0), Ci = iparam(p, 1), H = iparam(p, 2), W = iparam(p, 3), Co = iparam(p, 4);
    int k = iparam(p, 5), s = iparam(p, 6), pt = iparam(p, 7), pl = iparam(p, 8), pb = iparam(p, 9);
    int pr = iparam(p, 10), has_temb = iparam(p, 11), has_res = iparam(p, 12), has_bias = iparam(p, 13);
    float scale = (float)p->v[14];
    int Ho = (H + pt + pb - k) / s + 1, Wo = (W + pl + pr - k) / s + 1;
    int64_t no = (int64_t)B * Co * Ho * Wo;
    float *x = tensor(cname, "x", (int64_t)B * Ci * H * W), *w = tensor(cname, "w", (int64_t)Co * Ci * k * k);
    float *b = has_bias ? tensor(cname, "b", Co) : NULL;
    float *temb = has_temb ? tensor(cname, "temb", (int64_t)B * Co) : NULL;
    float *res = has_res ? tensor(cname, "res", no) : NULL;
    float *want = tensor(cname, "out", no), *got = alloc_floats(no);
    if (x && w && want && (b || !has_bias) && (temb || !has_temb) && (res || !has_res)) {
        conv2d_forward(got, x, w, b, temb, res, scale, B, Ci, H, W, Co, k, s, pt, pl, pb, pr);
        compare(cname, "conv2d (fast, best kernel)", got, want, no);
        memset(got, 0, (size_t)no * sizeof(float));
        use_portable_kernel(1);
        conv2d_forward(got, x, w, b, temb, res, scale, B, Ci, H, W, Co, k, s, pt, pl, pb, pr);
        use_portable_kernel(0);
        compare(cname, "conv2d (fast, portable kernel)", got, want, no);
        memset(got, 0, (size_t)no * sizeof(float));
        conv2d_forward_naive(got, x, w, b, temb, res, scale, B, Ci, H, W, Co, k, s, pt, pl, pb, pr);
        compare(cname, "conv2d (naive)", got, want, no);
    }
    free(x), free(w), free(b), free(temb), free(res), free(want), free(got);
}

static void run_groupnorm(const char *cname, const params *p)
{
    int B = iparam(p, 0), C = iparam(p, 1), HW = iparam(p, 2), G = iparam(p, 3), silu = iparam(p, 5);
    float eps = (float)p->v[4];
    int64_t n = (int64_t)B * C * HW;
    float *x = tensor(cname, "x", n), *g = tensor(cname, "gamma", C), *be = tensor(cname, "beta", C);
    float *want = tensor(cname, "out", n), *got = alloc_floats(n);
    if (x && g && be && want) {
        groupnorm_forward(got, x, g, be, B, C, HW, G, eps, silu);
        compare(cname, silu ? "groupnorm+silu" : "groupnorm", got, want, n);
    }
    free(x), free(g), free(be), free(want), free(got);
}

static void run_attention(const char *cname, const params *p)
{
    int B = iparam(p, 0), C = iparam(p, 1), HW = iparam(p, 2), heads = iparam(p, 3);
    int64_t n = (int64_t)B * C * HW;
    float *q = tensor(cname, "q", n), *k = tensor(cname, "k", n), *v = tensor(cname, "v", n);
    float *want = tensor(cname, "out", n), *got = alloc_floats(n);
    if (q && k && v && want) {
        attention_forward(got, q, k, v, B, C, HW, heads);
        compare(cname, "attention", got, want, n);
    }
    free(q), free(k), free(v), free(want), free(got);
}

static void run_upsample(const char *cname, const params *p)
{
    int B = iparam(p, 0), C = iparam(p, 1), H = iparam(p, 2), W = iparam(p, 3);
    int64_t n = (int64_t)B * C * H * W;
    float *x = tensor(cname, "x", n), *want = tensor(cname, "out", 4 * n), *got = alloc_floats(4 * n);
    if (x && want) {
        upsample_forward(got, x, B, C, H, W);
        compare(cname, "upsample", got, want, 4 * n);
    }
    free(x), free(want), free(got);
}

static void run_concat(const char *cname, const params *p)
{
    int B = iparam(p, 0), Ca = iparam(p, 1), Cb = iparam(p, 2), HW = iparam(p, 3);
    int64_t n = (int64_t)B * (Ca + Cb) * HW;
    float *a = tensor(cname, "a", (int64_t)B * Ca * HW), *b = tensor(cname, "b", (int64_t)B * Cb * HW);
    float *want = tensor(cname, "out", n), *got = alloc_floats(n);
    if (a && b && want) {
        concat_forward(got, a, b, B, Ca, Cb, HW);
        compare(cname, "concat", got, want, n);
    }
    free(a), free(b), free(want), free(got);
}

typedef void (*case_fn)(const char *cname, const params *p);
static const struct {
    const char *op;
    case_fn fn;
    int n_params;
} runners[] = {
    {"time_embed", run_time_embed, 4}, {"linear", run_linear, 3},       {"silu", run_silu, 1},
    {"conv2d", run_conv2d, 15},        {"groupnorm", run_groupnorm, 6}, {"attention", run_attention, 4},
    {"upsample", run_upsample, 4},     {"concat", run_concat, 4},
};

/* Runs every "case.<name>" entry of the fixture; returns how many cases each op had. */
static void run_fixture_cases(int *per_op)
{
    test_open_fixture("ops.safetensors", &fx);
    for (int i = 0; i < fx.n_meta; i++) {
        const char *key = fx.meta[i].key, *val = fx.meta[i].value;
        if (strncmp(key, "case.", 5) != 0)
            continue;
        const char *cname = key + 5;
        char op[32];
        int used = 0;
        int got_op = sscanf(val, "%31s%n", op, &used) == 1;
        CHECK(got_op, "%s: unreadable case spec '%s'", cname, val);
        if (!got_op)
            continue;
        params p = {{0}, 0};
        const char *s = val + used;
        char *end;
        while (p.n < 16) {
            double d = strtod(s, &end);
            if (end == s)
                break;
            p.v[p.n++] = d;
            s = end;
        }
        int found = 0;
        for (size_t r = 0; r < DDPM_ARRAY_LEN(runners); r++) {
            if (strcmp(op, runners[r].op) != 0)
                continue;
            found = 1;
            CHECK(p.n == runners[r].n_params, "%s: %d parameters, %s takes %d", cname, p.n, op,
                  runners[r].n_params);
            if (p.n != runners[r].n_params)
                break;
            runners[r].fn(cname, &p);
            for (int o = 0; o < OP_COUNT; o++)
                if (strcmp(op_names[o], op) == 0)
                    per_op[o]++;
        }
        CHECK(found, "%s: unknown op '%s'", cname, op);
    }
    st_close(&fx);
}

/* ---- fast conv vs naive conv on random shapes ------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1), xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 23) - 1.0f;
}
static float *rand_floats(int64_t n, float scale)
{
    float *p = alloc_floats(n);
    for (int64_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

static void conv_random(int B, int Ci, int H, int W, int Co, int k, int s, int pt, int pl, int pb, int pr,
                        int with_extras)
{
    int Ho = (H + pt + pb - k) / s + 1, Wo = (W + pl + pr - k) / s + 1;
    int64_t no = (int64_t)B * Co * Ho * Wo;
    float *x = rand_floats((int64_t)B * Ci * H * W, 1.0f);
    float *w = rand_floats((int64_t)Co * Ci * k * k, 1.0f / sqrtf((float)Ci * k * k));
    float *b = rand_floats(Co, 1.0f);
    float *temb = with_extras ? rand_floats((int64_t)B * Co, 1.0f) : NULL;
    float *res = with_extras ? rand_floats(no, 1.0f) : NULL;
    float scale = with_extras ? 0.70710678f : 1.0f;
    float *want = alloc_floats(no), *got = alloc_floats(no);
    conv2d_forward_naive(want, x, w, b, temb, res, scale, B, Ci, H, W, Co, k, s, pt, pl, pb, pr);
    char label[160];
    for (int generic = 0; generic < 2; generic++) {
        use_portable_kernel(generic);
        memset(got, 0, (size_t)no * sizeof(float));
        conv2d_forward(got, x, w, b, temb, res, scale, B, Ci, H, W, Co, k, s, pt, pl, pb, pr);
        use_portable_kernel(0);
        snprintf(label, sizeof label, "fast vs naive conv B%d %d->%d %dx%d k%d s%d pad %d,%d,%d,%d%s (%s)", B,
                 Ci, Co, H, W, k, s, pt, pl, pb, pr, with_extras ? " +temb+res" : "",
                 generic ? "portable kernel" : "best kernel");
        test_close(label, got, want, no, ATOL, RTOL);
    }
    free(x), free(w), free(b), free(temb), free(res), free(want), free(got);
}

/* ---- throughput -------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GFLOP/s of a 3x3 pad-1 conv (multiply-add = 2 FLOP), best of a few runs (more for small shapes, whose
 * time a busy machine disturbs most). */
static double conv_gflops(int naive, int C, int S, int reps)
{
    double flop = 2.0 * C * C * 9 * S * S;
    if (!naive && reps < 1e9 / flop)
        reps = (int)(1e9 / flop) < 50 ? (int)(1e9 / flop) : 50;
    float *x = rand_floats((int64_t)C * S * S, 1.0f), *w = rand_floats((int64_t)C * C * 9, 0.05f);
    float *b = rand_floats(C, 1.0f), *out = alloc_floats((int64_t)C * S * S);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (naive)
            conv2d_forward_naive(out, x, w, b, NULL, NULL, 1.0f, 1, C, S, S, C, 3, 1, 1, 1, 1, 1);
        else
            conv2d_forward(out, x, w, b, NULL, NULL, 1.0f, 1, C, S, S, C, 3, 1, 1, 1, 1, 1);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    free(x), free(w), free(b), free(out);
    return flop / best * 1e-9;
}

int main(void)
{
    if (getenv("DDPM_CPU_SIMD"))
        user_simd = strdup(getenv("DDPM_CPU_SIMD"));
    printf("CPU ops vs PyTorch fp32 (atol %g, rtol %g; time_embed atol %g)\n", (double)ATOL, (double)RTOL,
           (double)ATOL_TIME_EMBED);
    int per_op[OP_COUNT] = {0}, total = 0;
    run_fixture_cases(per_op);
    for (int o = 0; o < OP_COUNT; o++) {
        CHECK(per_op[o] > 0, "op %s has no fixture case", op_names[o]);
        total += per_op[o];
    }
    CHECK(total >= 37, "only %d fixture cases ran (expected 37)", total);
    printf("%d fixture cases\n", total);

    conv_random(2, 127, 9, 7, 128, 3, 1, 1, 1, 1, 1, 1);
    conv_random(1, 128, 16, 16, 127, 3, 2, 0, 0, 1, 1, 0);
    conv_random(1, 128, 8, 8, 128, 3, 2, 1, 1, 1, 1, 0);
    conv_random(1, 3, 32, 32, 128, 3, 1, 1, 1, 1, 1, 0);
    conv_random(3, 64, 5, 5, 13, 1, 1, 0, 0, 0, 0, 1);
    conv_random(1, 256, 4, 4, 256, 3, 1, 1, 1, 1, 1, 1);
    conv_random(2, 7, 11, 13, 5, 5, 2, 2, 1, 0, 2, 1);
    conv_random(1, 1024, 6, 6, 13, 3, 1, 1, 1, 1, 1, 0); /* K = 9216: chunks shrink to one panel */

    printf("conv3x3 throughput (batch 1, %s kernel):\n",
           user_simd && !strcmp(user_simd, "generic") ? "portable" : "best");
    printf("  naive 128ch 32x32: %.2f GFLOP/s\n", conv_gflops(1, 128, 32, 1));
    const int shapes[][2] = {{128, 32}, {256, 16}, {256, 8}, {256, 4}};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(shapes); i++)
        printf("  fast  %dch %dx%d: %.2f GFLOP/s\n", shapes[i][0], shapes[i][1], shapes[i][1],
               conv_gflops(0, shapes[i][0], shapes[i][1], 5));
    free(user_simd);
    return test_summary("cpu_ops");
}
