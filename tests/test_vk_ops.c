/* test_vk_ops.c: every U-Net op's shader against the CPU op (src/cpu/ops.c) on odd shapes: channels 1,
 * 3, 13, 127, 128; sizes 1x1, 7x7, 28x28, 32x32; batch 1 and 3; fp32 and fp16; default and baseline
 * limits. Each node is checked alone: the CPU op runs on the very inputs the GPU read (downloaded). */
#include "cpu/cpu.h"
#include "safetensors.h"
#include "test_util.h"
#include "vk/vk_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Tolerances, relative to the largest |value| of the tensor compared (s = max(1, max |want|)):
 * fp32 |got - want| <= 2e-5 s + 2e-5 |want|: only the summation order differs;
 * fp16 |got - want| <= 2e-3 s + 2e-3 |want|: the output is rounded to fp16 (2^-11 relative), the CPU
 * gets the same fp16-rounded weights and inputs. */
#define TOL32 2e-5f
#define TOL16 2e-3f

#define MAXV 64

/* A hand-built graph: values, params (random weights) and nodes, enough to chain every op. */
typedef struct tgraph {
    ddpm_graph g;
    ddpm_value values[MAXV];
    ddpm_param params[MAXV];
    ddpm_node nodes[MAXV];
    float *w[MAXV];
} tgraph;

static uint64_t lcg = 0x2545F4914F6CDD1Dull;
static float urand(void) /* [-1, 1) */
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg >> 40) * (2.0 / 16777216.0) - 1.0);
}

static int tv(tgraph *t, int c, int h, int w)
{
    t->values[t->g.n_values] = (ddpm_value){c, h, w};
    return t->g.n_values++;
}

static int tparam(tgraph *t, int64_t numel, float scale, float offset)
{
    int id = t->g.n_params++;
    snprintf(t->params[id].name, DDPM_MAX_NAME, "p%d", id);
    t->params[id].ndim = 1;
    t->params[id].shape[0] = (int)numel;
    t->params[id].numel = numel;
    t->w[id] = malloc((size_t)numel * sizeof(float));
    for (int64_t i = 0; i < numel; i++)
        t->w[id][i] = offset + scale * urand();
    return id;
}

static ddpm_node *tnode(tgraph *t, ddpm_op op, int in0, int in1, int in2, int c, int h, int w)
{
    ddpm_node *n = &t->nodes[t->g.n_nodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->in[0] = in0;
    n->in[1] = in1;
    n->in[2] = in2;
    n->w[0] = n->w[1] = -1;
    n->fp[0] = 1.0f;
    snprintf(n->name, DDPM_MAX_NAME, "%s.%d", ddpm_op_names[op], t->g.n_nodes);
    n->out = tv(t, c, h, w);
    t->g.n_nodes++;
    return n;
}

static int conv(tgraph *t, int x, int co, int k, int stride, int pt, int pl, int pb, int pr, int temb,
                int res, float scale)
{
    ddpm_value in = t->values[x];
    int ho = (in.h + pt + pb - k) / stride + 1, wo = (in.w + pl + pr - k) / stride + 1;
    ddpm_node *n = tnode(t, OP_CONV2D, x, temb, res, co, ho, wo);
    n->w[0] = tparam(t, (int64_t)co * in.c * k * k, 1.0f / sqrtf((float)(in.c * k * k)), 0.0f);
    n->w[1] = tparam(t, co, 0.1f, 0.0f);
    n->ip[0] = k;
    n->ip[1] = stride;
    n->ip[2] = pt;
    n->ip[3] = pl;
    n->ip[4] = pb;
    n->ip[5] = pr;
    n->fp[0] = scale;
    return n->out;
}

static int gn(tgraph *t, int x, int groups, int silu)
{
    ddpm_value in = t->values[x];
    ddpm_node *n = tnode(t, OP_GROUPNORM, x, -1, -1, in.c, in.h, in.w);
    n->w[0] = tparam(t, in.c, 0.5f, 1.0f);
    n->w[1] = tparam(t, in.c, 0.5f, 0.0f);
    n->ip[0] = groups;
    n->ip[1] = silu;
    n->fp[0] = 1e-6f;
    return n->out;
}

static int linear(tgraph *t, int x, int m)
{
    int k = t->values[x].c;
    ddpm_node *n = tnode(t, OP_LINEAR, x, -1, -1, m, 1, 1);
    n->w[0] = tparam(t, (int64_t)m * k, 1.0f / sqrtf((float)k), 0.0f);
    n->w[1] = tparam(t, m, 0.1f, 0.0f);
    return n->out;
}

static int op1(tgraph *t, ddpm_op op, int x)
{
    ddpm_value in = t->values[x];
    int s = op == OP_UPSAMPLE ? 2 : 1;
    return tnode(t, op, x, -1, -1, in.c, in.h * s, in.w * s)->out;
}

static int attention(tgraph *t, int q, int k, int v, int heads)
{
    ddpm_value in = t->values[q];
    ddpm_node *n = tnode(t, OP_ATTENTION, q, k, v, in.c, in.h, in.w);
    n->ip[0] = heads;
    return n->out;
}

static int concat(tgraph *t, int a, int b)
{
    ddpm_value va = t->values[a];
    return tnode(t, OP_CONCAT, a, b, -1, va.c + t->values[b].c, va.h, va.w)->out;
}

static int time_path(tgraph *t, int c0, int flip, int m)
{
    t->g.timestep = tv(t, 1, 1, 1);
    ddpm_node *te = tnode(t, OP_TIME_EMBED, t->g.timestep, -1, -1, c0, 1, 1);
    te->ip[0] = flip;
    te->fp[0] = 1.0f;
    int l1 = linear(t, te->out, m);
    return op1(t, OP_SILU, l1);
}

/* Graph A, input (3, 32, 32): 3x3 convs (3 -> 13 -> 13 with the time embedding), both stride-2
 * paddings, GroupNorm with one group, linear, SiLU, time embedding (flip). */
static void build_a(tgraph *t)
{
    memset(t, 0, sizeof *t);
    t->g.input = tv(t, 3, 32, 32);
    int temb = time_path(t, 128, 1, 13);
    int v1 = conv(t, t->g.input, 13, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    int v2 = gn(t, v1, 1, 1);
    int v3 = conv(t, v2, 13, 3, 1, 1, 1, 1, 1, temb, -1, 1.0f);
    int v4 = conv(t, v3, 13, 3, 2, 0, 0, 1, 1, -1, -1, 1.0f); /* TF SAME: 16x16 */
    int v5 = conv(t, v4, 13, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f); /* symmetric: 8x8 */
    t->g.output = conv(t, v5, 3, 1, 1, 0, 0, 0, 0, -1, -1, 1.0f);
}

/* Graph B, input (1, 28, 28): channels 1, 3, 13, 127, 128; sizes 28x28, 14x14, 7x7, 1x1; GroupNorm
 * with 32, 3 and 128 groups; attention with one head (d = 13) and four (d = 32) over 49, 196 and 1
 * positions; residual + scale; upsample; a concat whose skip input is also read by another node. */
static void build_b(tgraph *t)
{
    memset(t, 0, sizeof *t);
    t->g.input = tv(t, 1, 28, 28);
    t->g.timestep = tv(t, 1, 1, 1);
    int a1 = conv(t, t->g.input, 128, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    int a2 = gn(t, a1, 32, 1);
    int a3 = conv(t, a2, 127, 3, 2, 0, 0, 1, 1, -1, -1, 1.0f); /* 14x14, the skip */
    int a4 = conv(t, a3, 3, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f);   /* 7x7 */
    int a5 = gn(t, a4, 3, 0);
    int q = conv(t, a5, 13, 1, 1, 0, 0, 0, 0, -1, -1, 1.0f);
    int k = conv(t, a5, 13, 1, 1, 0, 0, 0, 0, -1, -1, 1.0f);
    int v = conv(t, a5, 13, 1, 1, 0, 0, 0, 0, -1, -1, 1.0f);
    int at = attention(t, q, k, v, 1);
    int o = conv(t, at, 13, 1, 1, 0, 0, 0, 0, -1, q, 0.5f);
    int up = op1(t, OP_UPSAMPLE, o); /* 14x14 */
    int c1 = conv(t, up, 1, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    int cat = concat(t, c1, a3); /* 128 x 14 x 14 */
    int at2 = attention(t, cat, cat, cat, 4);
    int f = conv(t, at2, 3, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    /* down to 1x1: 7 -> 4 -> 2 -> 1 */
    int d1 = conv(t, a4, 13, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f);
    int d2 = conv(t, d1, 13, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f);
    int d3 = conv(t, d2, 128, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f); /* 1x1, padding only */
    int d4 = gn(t, d3, 128, 1);
    int d5 = attention(t, d4, d4, d4, 4);
    int d6 = op1(t, OP_UPSAMPLE, d5); /* 2x2 */
    int d7 = linear(t, d3, 127);
    (void)d6;
    (void)d7;
    t->g.output = f;
}

static void tgraph_free(tgraph *t)
{
    for (int i = 0; i < t->g.n_params; i++)
        free(t->w[i]);
}

static float round16(float x)
{
    return st_half_to_float(st_float_to_half(x));
}

/* Runs graph t on the context for batch B and checks every node against the CPU op. */
static void run_graph(vk_context *ctx, const char *label, tgraph *t, int B, int fp16, int conv)
{
    ddpm_graph *g = &t->g;
    g->values = t->values;
    g->params = t->params;
    g->nodes = t->nodes;
    float **w = calloc((size_t)g->n_params, sizeof *w); /* the weights the GPU holds */
    for (int i = 0; i < g->n_params; i++) {
        w[i] = malloc((size_t)t->params[i].numel * sizeof(float));
        for (int64_t e = 0; e < t->params[i].numel; e++)
            w[i][e] = fp16 ? round16(t->w[i][e]) : t->w[i][e];
    }
    int64_t nin = B * value_numel(&g->values[g->input]), nout = B * value_numel(&g->values[g->output]);
    float *x = malloc((size_t)nin * sizeof(float));
    for (int64_t i = 0; i < nin; i++)
        x[i] = urand();
    float coef[2 * DDPM_COEF_STRIDE] = {0};
    coef[DDPM_COEF_T] = 517.0f;
    coef[DDPM_COEF_STRIDE + DDPM_COEF_T] = 3.0f;
    vk_buffer xb = {0}, ob = {0}, cb = {0}, sb = {0};
    vk_unet *u = NULL;
    ddpm_result r = vk_buffer_create(ctx, (size_t)nin * 4, VK_MEM_DEVICE, "x", &xb);
    r = r ? r : vk_buffer_create(ctx, (size_t)nout * 4, VK_MEM_DEVICE, "out", &ob);
    r = r ? r : vk_buffer_create(ctx, sizeof coef, VK_MEM_DEVICE, "coef", &cb);
    r = r ? r : vk_buffer_create(ctx, 4, VK_MEM_HOST, "step", &sb);
    r = r ? r : vk_buffer_upload(ctx, &xb, 0, x, (size_t)nin * 4);
    r = r ? r : vk_buffer_upload(ctx, &cb, 0, coef, sizeof coef);
    vk_unet_desc d = {.graph = g,
                      .weights = (const float *const *)w,
                      .chunk = B,
                      .fp16 = fp16,
                      .keep_all = 1,
                      .conv = conv,
                      .group = conv == VK_CONV_SHARED ? 256 : 0, /* the GPU configuration */
                      .x = &xb,
                      .out = &ob,
                      .coef = &cb,
                      .step = &sb};
    r = r ? r : vk_unet_create(ctx, &d, &u);
    CHECK(r == DDPM_OK, "%s: set-up: %s", label, ddpm_last_error());
    float **vals = calloc((size_t)g->n_values, sizeof *vals);
    float *want = NULL, *outv = malloc((size_t)nout * sizeof(float));
    for (int step = 0; step < 2 && r == DDPM_OK; step++) {
        uint32_t s = (uint32_t)step;
        memcpy(sb.mapped, &s, 4);
        VkCommandBuffer cmd;
        r = vk_oneshot_begin(ctx, &cmd);
        r = r ? r : vk_unet_record(u, cmd, 0, B);
        if (r == DDPM_OK)
            vk_barrier_from_compute(cmd);
        r = r ? r : vk_oneshot_end(ctx);
        CHECK(r == DDPM_OK, "%s: run: %s", label, ddpm_last_error());
        if (r != DDPM_OK)
            break;
        for (int v = 0; v < g->n_values; v++) {
            free(vals[v]);
            vals[v] = malloc((size_t)(B * value_numel(&g->values[v])) * sizeof(float));
            if (v == g->timestep) {
                for (int b = 0; b < B; b++)
                    vals[v][b] = coef[step * DDPM_COEF_STRIDE + DDPM_COEF_T];
            } else if (v == g->input) {
                for (int64_t i = 0; i < nin; i++)
                    vals[v][i] = fp16 ? round16(x[i]) : x[i];
            } else {
                r = vk_unet_download(u, v, B, vals[v]);
                CHECK(r == DDPM_OK, "%s: download value %d: %s", label, v, ddpm_last_error());
            }
        }
        /* every node alone on the GPU's own inputs */
        for (int i = 0; i < g->n_nodes; i++) {
            const ddpm_node *n = &g->nodes[i];
            int64_t ne = B * value_numel(&g->values[n->out]);
            want = realloc(want, (size_t)ne * sizeof(float));
            float *got = vals[n->out];
            vals[n->out] = want;
            cpu_node_forward(g, n, vals, (const float *const *)w, B);
            vals[n->out] = got;
            float s = 1.0f, emax = 0.0f, vmax = 0.0f;
            for (int64_t e = 0; e < ne; e++) {
                s = fmaxf(s, fabsf(want[e]));
                vmax = fmaxf(vmax, fabsf(want[e]));
                emax = fmaxf(emax, fabsf(got[e] - want[e]));
            }
            float tol = fp16 ? TOL16 : TOL32;
            const ddpm_value *o = &g->values[n->out];
            char what[192];
            snprintf(what, sizeof what, "%s B=%d t=%g %s (%dx%dx%d; max|want| %.3g, max|err| %.3g)", label, B,
                     (double)coef[step * DDPM_COEF_STRIDE + DDPM_COEF_T], n->name, o->c, o->h, o->w,
                     (double)vmax, (double)emax);
            CHECK(test_close(what, got, want, ne, tol * s, tol), "%s", what);
        }
        /* the whole graph against the CPU forward, and the float32 output buffer */
        r = vk_buffer_download(ctx, &ob, 0, outv, (size_t)nout * 4);
        CHECK(r == DDPM_OK, "%s: output download", label);
        CHECK(memcmp(outv, vals[g->output], (size_t)nout * 4) == 0 || fp16,
              "%s: output buffer = the arena's output value", label);
    }
    if (u) {
        float *t_in = malloc((size_t)B * sizeof(float)), *full = malloc((size_t)nout * sizeof(float));
        for (int b = 0; b < B; b++)
            t_in[b] = 3.0f;
        ddpm_result cr = cpu_unet_forward(g, (const float *const *)w, B, x, t_in, full);
        CHECK(cr == DDPM_OK, "cpu forward");
        char what[128];
        snprintf(what, sizeof what, "%s B=%d whole graph vs CPU forward", label, B);
        float tol = fp16 ? 2e-2f : 1e-4f;
        CHECK(test_close(what, outv, full, nout, tol, tol), "%s", what);
        free(t_in);
        free(full);
    }
    vk_unet_destroy(u);
    vk_buffer_destroy(ctx, &xb);
    vk_buffer_destroy(ctx, &ob);
    vk_buffer_destroy(ctx, &cb);
    vk_buffer_destroy(ctx, &sb);
    for (int v = 0; v < g->n_values; v++)
        free(vals[v]);
    free(vals);
    free(want);
    free(outv);
    free(x);
    for (int i = 0; i < g->n_params; i++)
        free(w[i]);
    free(w);
}

int main(void)
{
    setenv("DDPM_VALIDATION", "1", 0);
    setenv("DDPM_CACHE_DIR", "0", 1);
    const char *spec = getenv("DDPM_DEVICE");
    if (spec && strcmp(spec, "cpu") == 0)
        spec = NULL;
    for (int baseline = 0; baseline < 2; baseline++) {
        vk_context ctx;
        ddpm_result r = vk_context_create(spec, &ctx);
        if (r != DDPM_OK) {
            CHECK(0, "no Vulkan device (%s): %s; this test needs one (lavapipe works)", ddpm_result_string(r),
                  ddpm_last_error());
            return test_summary("vk_ops");
        }
        CHECK(ctx.inst.validation, "the validation layer must be on");
        if (baseline) {
            vk_context_clamp_baseline(&ctx);
            /* few workgroups along x: the element-wise kernels must loop (grid stride) to cover 28x28x128 */
            ctx.limits.max_group_count[0] = 128;
        }
        printf("device: %s, %s limits: %u B shared, %u invocations, range %u, %u buffers\n", ctx.name,
               baseline ? "baseline" : "default", ctx.limits.max_shared_memory, ctx.limits.max_invocations,
               ctx.limits.max_storage_range, ctx.limits.max_storage_buffers);
        /* both convolution kernels with the default limits, the shared-memory GEMM (the GPU one) with
         * the baseline limits; the GEMM runs with 256-invocation workgroups as on a GPU (capped at 128
         * by the baseline limits), the register kernel with lavapipe's 64 */
        for (int conv = VK_CONV_SHARED; conv <= (baseline ? VK_CONV_SHARED : VK_CONV_REG); conv++) {
            for (int fp16 = 0; fp16 < 2; fp16++) {
                if (fp16 && !ctx.limits.storage16) {
                    CHECK(0, "%s has no 16-bit storage: fp16 untested", ctx.name);
                    continue;
                }
                char label[64];
                const char *cn = conv == VK_CONV_REG ? "reg" : "gemm";
                const char *lim = baseline ? "baseline" : "default";
                tgraph *t = malloc(sizeof *t);
                snprintf(label, sizeof label, "A %s %s %s", fp16 ? "fp16" : "fp32", lim, cn);
                build_a(t);
                run_graph(&ctx, label, t, baseline ? 1 : 3, fp16, conv);
                tgraph_free(t);
                snprintf(label, sizeof label, "B %s %s %s", fp16 ? "fp16" : "fp32", lim, cn);
                build_b(t);
                run_graph(&ctx, label, t, baseline ? 3 : 1, fp16, conv);
                tgraph_free(t);
                free(t);
            }
        }
        vk_context_destroy(&ctx);
    }
    CHECK(vk_validation_message_count() == 0, "validation messages: %u", vk_validation_message_count());
    return test_summary("vk_ops");
}
