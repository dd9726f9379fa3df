/* test_vk_unet.c: the whole U-Net on Vulkan against the CPU backend and the PyTorch fixtures
 * (tests/fixtures/unet_{a,b,c,d}), full DDPM and DDIM sampling on Vulkan against the CPU with the same
 * seed, the pipeline cache reused by a second start, and a batch too large refused before any work. */
#include "cpu/cpu.h"
#include "sampler.h"
#include "test_util.h"
#include "vk/plan.h"
#include "vk/vk_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tolerances (|got - want| <= atol + rtol |want|):
 *  U-Net forward, fp32, vs the CPU backend: 2e-5, 2e-5; vs PyTorch: 1e-4, 1e-4 (the CPU backend's own
 *  torch tolerance is 1e-5 + 1e-4 rel; the GPU sums in another order);
 *  U-Net forward, fp16 storage: relative L2 error ||got - want|| / ||want|| <= 1e-2 (every activation
 *  and weight rounded to 11 bits through ~100 layers: measured ~1.5e-3; the fixtures' outputs are small,
 * ~1e-2, so an absolute bound would say little); sampling, fp32: 2e-3, 2e-3 on the final images (the same as
 * test_cli's Vulkan-vs-CPU check); sampling, fp16: 5e-2, 5e-2. */
#define FWD32 2e-5f
#define TORCH32 1e-4f
#define FWD16 1e-2f
#define SAMPLE32 2e-3f
#define SAMPLE16 5e-2f
/* Bytes per activation buffer in the split test: unet_a's 2-image activations (150 KiB in one buffer)
 * then need at least 3. */
#define ACT_SPLIT_RANGE (64u * 1024u)

static const char *spec;

/* ||got - want|| / ||want||, printed. */
static int rel_l2_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int ok = rel <= tol; /* NaN fails */
    printf("%s %s: n=%lld relative L2 error %.3g (tolerance %.3g)\n", ok ? "ok  " : "FAIL", what,
           (long long)n, rel, tol);
    return ok;
}

/* The U-Net of fixture `tag` on the GPU, image by image (each image's t through its own coefficient
 * row), compared with PyTorch's output and with the CPU backend. */
static void test_forward(vk_context *ctx, const char *tag, int fp16, const char *mode)
{
    char name[96], what[160];
    snprintf(name, sizeof name, "unet_%s.safetensors", tag);
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path(name), &m);
    CHECK(r == DDPM_OK, "load %s: %s", name, ddpm_last_error());
    if (r != DDPM_OK)
        return;
    const ddpm_graph *g = &m->graph;
    snprintf(name, sizeof name, "unet_%s_io.safetensors", tag);
    st_file io;
    test_open_fixture(name, &io);
    int64_t nx, nt, nout;
    float *x = test_tensor(&io, "x", &nx), *t = test_tensor(&io, "t", &nt),
          *want = test_tensor(&io, "out", &nout);
    int B = (int)nt;
    float *got = calloc((size_t)nout, sizeof(float)), *cpu = calloc((size_t)nout, sizeof(float));
    float *coef = calloc((size_t)B * DDPM_COEF_STRIDE, sizeof(float));
    for (int b = 0; b < B; b++)
        coef[b * DDPM_COEF_STRIDE + DDPM_COEF_T] = t[b];
    vk_buffer xb = {0}, ob = {0}, cb = {0}, sb = {0};
    vk_unet *u = NULL;
    r = vk_buffer_create(ctx, (size_t)nx * 4, VK_MEM_DEVICE, "x", &xb);
    r = r ? r : vk_buffer_create(ctx, (size_t)nout * 4, VK_MEM_DEVICE, "out", &ob);
    r = r ? r : vk_buffer_create(ctx, (size_t)B * DDPM_COEF_STRIDE * 4, VK_MEM_DEVICE, "coef", &cb);
    r = r ? r : vk_buffer_create(ctx, 4, VK_MEM_HOST, "step", &sb);
    r = r ? r : vk_buffer_upload(ctx, &xb, 0, x, (size_t)nx * 4);
    r = r ? r : vk_buffer_upload(ctx, &cb, 0, coef, (size_t)B * DDPM_COEF_STRIDE * 4);
    vk_unet_desc d = {.graph = g,
                      .weights = (const float *const *)m->weights,
                      .chunk = B,
                      .fp16 = fp16,
                      .x = &xb,
                      .out = &ob,
                      .coef = &cb,
                      .step = &sb};
    r = r ? r : vk_unet_create(ctx, &d, &u);
    for (int b = 0; b < B && r == DDPM_OK; b++) { /* image b alone at offset b, t from row b */
        uint32_t row = (uint32_t)b;
        memcpy(sb.mapped, &row, 4);
        VkCommandBuffer cmd;
        r = vk_oneshot_begin(ctx, &cmd);
        r = r ? r : vk_unet_record(u, cmd, b, 1);
        if (r == DDPM_OK)
            vk_barrier_from_compute(cmd);
        r = r ? r : vk_oneshot_end(ctx);
    }
    r = r ? r : vk_buffer_download(ctx, &ob, 0, got, (size_t)nout * 4);
    CHECK(r == DDPM_OK, "unet_%s %s: %s", tag, mode, ddpm_last_error());
    r = cpu_unet_forward(g, (const float *const *)m->weights, B, x, t, cpu);
    CHECK(r == DDPM_OK, "cpu forward");
    snprintf(what, sizeof what, "unet_%s %s forward (B=%d, t=%g,%g) vs CPU backend", tag, mode, B, t[0],
             t[1]);
    if (fp16)
        CHECK(rel_l2_close(what, got, cpu, nout, FWD16), "%s", what);
    else
        CHECK(test_close(what, got, cpu, nout, FWD32, FWD32), "%s", what);
    snprintf(what, sizeof what, "unet_%s %s forward vs PyTorch", tag, mode);
    if (fp16)
        CHECK(rel_l2_close(what, got, want, nout, FWD16), "%s", what);
    else
        CHECK(test_close(what, got, want, nout, TORCH32, TORCH32), "%s", what);
    vk_unet_destroy(u);
    vk_buffer_destroy(ctx, &xb);
    vk_buffer_destroy(ctx, &ob);
    vk_buffer_destroy(ctx, &cb);
    vk_buffer_destroy(ctx, &sb);
    free(x);
    free(t);
    free(want);
    free(got);
    free(cpu);
    free(coef);
    st_close(&io);
    ddpm_model_free(m);
}

/* Five images through a U-Net planned for chunks of two, recorded as three chunks into one command
 * buffer (as a step does when a batch's activations exceed the buffer range), against the CPU. */
static void test_chunks(vk_context *ctx)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_b.safetensors"), &m);
    CHECK(r == DDPM_OK, "load: %s", ddpm_last_error());
    if (r != DDPM_OK)
        return;
    const ddpm_graph *g = &m->graph;
    enum { N = 5, CHUNK = 2 };
    int64_t per = value_numel(&g->values[g->input]), nx = N * per;
    float *x = malloc((size_t)nx * 4), *got = malloc((size_t)nx * 4), *want = malloc((size_t)nx * 4);
    float t[N], coef[DDPM_COEF_STRIDE] = {0};
    uint64_t st = 99;
    for (int64_t i = 0; i < nx; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((st >> 40) * (2.0 / 16777216.0) - 1.0);
    }
    for (int b = 0; b < N; b++)
        t[b] = 917.0f;
    coef[DDPM_COEF_T] = 917.0f;
    vk_buffer xb = {0}, ob = {0}, cb = {0}, sb = {0};
    vk_unet *u = NULL;
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    r = vk_buffer_create(ctx, (size_t)nx * 4, VK_MEM_DEVICE, "x", &xb);
    r = r ? r : vk_buffer_create(ctx, (size_t)nx * 4, VK_MEM_DEVICE, "out", &ob);
    r = r ? r : vk_buffer_create(ctx, sizeof coef, VK_MEM_DEVICE, "coef", &cb);
    r = r ? r : vk_buffer_create(ctx, 4, VK_MEM_HOST, "step", &sb);
    r = r ? r : vk_buffer_upload(ctx, &xb, 0, x, (size_t)nx * 4);
    r = r ? r : vk_buffer_upload(ctx, &cb, 0, coef, sizeof coef);
    if (r == DDPM_OK)
        memset(sb.mapped, 0, 4);
    vk_unet_desc d = {.graph = g,
                      .weights = (const float *const *)m->weights,
                      .chunk = CHUNK,
                      .x = &xb,
                      .out = &ob,
                      .coef = &cb,
                      .step = &sb};
    r = r ? r : vk_unet_create(ctx, &d, &u);
    r = r ? r : vk_oneshot_begin(ctx, &cmd);
    for (int first = 0; first < N && r == DDPM_OK; first += CHUNK)
        r = vk_unet_record(u, cmd, first, N - first < CHUNK ? N - first : CHUNK);
    if (r == DDPM_OK)
        vk_barrier_from_compute(cmd);
    r = r ? r : vk_oneshot_end(ctx);
    r = r ? r : vk_buffer_download(ctx, &ob, 0, got, (size_t)nx * 4);
    CHECK(r == DDPM_OK, "chunks: %s", ddpm_last_error());
    r = cpu_unet_forward(g, (const float *const *)m->weights, N, x, t, want);
    CHECK(r == DDPM_OK && test_close("unet_b, 5 images in chunks of 2 in one command buffer vs CPU", got,
                                     want, nx, FWD32, FWD32),
          "chunked U-Net");
    vk_unet_destroy(u);
    vk_buffer_destroy(ctx, &xb);
    vk_buffer_destroy(ctx, &ob);
    vk_buffer_destroy(ctx, &cb);
    vk_buffer_destroy(ctx, &sb);
    free(x);
    free(got);
    free(want);
    ddpm_model_free(m);
}

/* Buffers split: with the storage buffer range clamped to 96 KiB, unet_a's 279 KiB of weights are
 * split across several buffers (each node's weights in one); with act_range set, the activations of
 * `batch` images spread over several buffers of at most act_range bytes (the values a node reads
 * together in one). Either way the result equals the CPU's. */
static void test_split(int batch, uint64_t act_range)
{
    vk_context ctx;
    ddpm_model *m = NULL;
    ddpm_result r = vk_context_create(spec, &ctx);
    r = r ? r : ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "set-up: %s", ddpm_last_error());
    if (r != DDPM_OK) {
        vk_context_destroy(&ctx);
        return;
    }
    if (!act_range)
        ctx.limits.max_storage_range = 96 * 1024;
    const ddpm_graph *g = &m->graph;
    int64_t nx = value_numel(&g->values[g->input]) * batch;
    float *x = malloc((size_t)nx * 4), *got = malloc((size_t)nx * 4), *want = malloc((size_t)nx * 4);
    for (int64_t i = 0; i < nx; i++)
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    float t[2] = {517.0f, 517.0f}, coef[DDPM_COEF_STRIDE] = {0};
    coef[DDPM_COEF_T] = t[0];
    vk_buffer xb = {0}, ob = {0}, cb = {0}, sb = {0};
    vk_unet *u = NULL;
    r = vk_buffer_create(&ctx, (size_t)nx * 4, VK_MEM_DEVICE, "x", &xb);
    r = r ? r : vk_buffer_create(&ctx, (size_t)nx * 4, VK_MEM_DEVICE, "out", &ob);
    r = r ? r : vk_buffer_create(&ctx, sizeof coef, VK_MEM_DEVICE, "coef", &cb);
    r = r ? r : vk_buffer_create(&ctx, 4, VK_MEM_HOST, "step", &sb);
    r = r ? r : vk_buffer_upload(&ctx, &xb, 0, x, (size_t)nx * 4);
    r = r ? r : vk_buffer_upload(&ctx, &cb, 0, coef, sizeof coef);
    if (r == DDPM_OK)
        memset(sb.mapped, 0, 4);
    vk_unet_desc d = {.graph = g,
                      .weights = (const float *const *)m->weights,
                      .chunk = batch,
                      .act_range = act_range,
                      .x = &xb,
                      .out = &ob,
                      .coef = &cb,
                      .step = &sb};
    r = r ? r : vk_unet_create(&ctx, &d, &u);
    VkCommandBuffer cmd;
    r = r ? r : vk_oneshot_begin(&ctx, &cmd);
    r = r ? r : vk_unet_record(u, cmd, 0, batch);
    if (r == DDPM_OK)
        vk_barrier_from_compute(cmd);
    r = r ? r : vk_oneshot_end(&ctx);
    r = r ? r : vk_buffer_download(&ctx, &ob, 0, got, (size_t)nx * 4);
    CHECK(r == DDPM_OK, "split buffers: %s", ddpm_last_error());
    if (u) {
        uint64_t wbytes, abytes, largest;
        vk_unet_memory(u, &wbytes, &abytes);
        int n_act = vk_unet_act_buffers(u, &largest);
        printf(
            "weights %llu bytes in buffers of at most %u bytes, activations %llu bytes in %d buffer%s of at "
            "most %llu bytes\n",
            (unsigned long long)wbytes, ctx.limits.max_storage_range, (unsigned long long)abytes, n_act,
            n_act == 1 ? "" : "s", (unsigned long long)largest);
        if (!act_range)
            CHECK(wbytes > ctx.limits.max_storage_range && abytes <= ctx.limits.max_storage_range &&
                      n_act == 1,
                  "the weights need several buffers, the activations one");
        else
            CHECK(n_act >= 3 && largest <= act_range && abytes > act_range,
                  "the activations spread over several buffers within %llu bytes",
                  (unsigned long long)act_range);
    }
    r = cpu_unet_forward(g, (const float *const *)m->weights, batch, x, t, want);
    char what[160];
    if (act_range)
        snprintf(what, sizeof what,
                 "unet_a, %d image%s, activations split across buffers of %llu bytes, vs CPU", batch,
                 batch == 1 ? "" : "s", (unsigned long long)act_range);
    else
        snprintf(what, sizeof what, "unet_a, weights split across buffers of 96 KiB, vs CPU");
    CHECK(r == DDPM_OK && test_close(what, got, want, nx, FWD32, FWD32), "%s", what);
    vk_unet_destroy(u);
    vk_buffer_destroy(&ctx, &xb);
    vk_buffer_destroy(&ctx, &ob);
    vk_buffer_destroy(&ctx, &cb);
    vk_buffer_destroy(&ctx, &sb);
    vk_context_destroy(&ctx);
    free(x);
    free(got);
    free(want);
    ddpm_model_free(m);
}

/* The activation plan with a small buffer limit (no device): several buffers within the limit, the
 * values a node reads in one buffer, no two values alive at once overlapping; a limit below one tensor
 * refused; the memory estimate of one image above the range is one image spread over buffers. */
static void test_split_plan(void)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "load");
    if (r != DDPM_OK)
        return;
    const ddpm_graph *g = &m->graph;
    int nv = g->n_values, nn = g->n_nodes, batch = 2;
    int64_t max_elems = ACT_SPLIT_RANGE / 4;
    vk_plan p;
    r = vk_plan_make(g, batch, 0, max_elems, &p);
    CHECK(r == DDPM_OK && p.n_bufs >= 3, "plan in buffers of %lld elements: %d buffers (%s)",
          (long long)max_elems, p.n_bufs, ddpm_last_error());
    if (r == DDPM_OK) {
        int *def = calloc((size_t)nv, sizeof *def), *last = calloc((size_t)nv, sizeof *last), bad = 0;
        for (int v = 0; v < nv; v++) {
            def[v] = v == g->input ? -1 : nn + 1;
            last[v] = v == g->output ? nn : -2;
        }
        for (int i = 0; i < nn; i++) {
            def[g->nodes[i].out] = i;
            for (int k = 0; k < 3; k++)
                if (g->nodes[i].in[k] >= 0)
                    last[g->nodes[i].in[k]] = i;
        }
        for (int v = 0; v < nv; v++) { /* a root's life spans its members' */
            int rt = p.root[v];
            def[rt] = def[v] < def[rt] ? def[v] : def[rt];
            last[rt] = last[v] > last[rt] ? last[v] : last[rt];
        }
        for (int b = 0; b < p.n_bufs; b++)
            bad += p.buf_elems[b] > max_elems;
        for (int a = 0; a < nv; a++) {
            if (p.root[a] != a || p.off[a] < 0)
                continue;
            int64_t ea = p.off[a] + batch * p.bs[a];
            for (int b = a + 1; b < nv; b++) {
                if (p.root[b] != b || p.off[b] < 0 || p.buf[b] != p.buf[a])
                    continue;
                int la = last[a] > def[a] ? last[a] : def[a], lb = last[b] > def[b] ? last[b] : def[b];
                int alive = def[a] <= lb && def[b] <= la;
                int64_t eb = p.off[b] + batch * p.bs[b];
                bad += alive && p.off[a] < eb && p.off[b] < ea;
            }
        }
        for (int i = 0; i < nn; i++) {
            const ddpm_node *n = &g->nodes[i];
            if (n->op == OP_CONCAT || n->op == OP_TIME_EMBED)
                continue;
            for (int k = 1; k < 3; k++)
                bad += n->in[k] >= 0 && n->op != OP_LINEAR && p.buf[n->in[k]] != p.buf[n->in[0]];
        }
        CHECK(bad == 0,
              "%d buffers within %lld elements, live values disjoint, a node's reads in one buffer: %d "
              "violations",
              p.n_bufs, (long long)max_elems, bad);
        free(def);
        free(last);
        vk_plan_free(&p);
    }
    r = vk_plan_make(g, batch, 0, 64, &p);
    CHECK(r == DDPM_ERR_UNSUPPORTED, "a limit of 64 elements refused: %s", ddpm_last_error());
    printf("refusal: %s\n", ddpm_last_error());
    vk_mem_estimate e;
    r = vk_plan_memory(g, 5, 4, ACT_SPLIT_RANGE / 2, 10, &e);
    CHECK(r == DDPM_OK && e.chunk == 1 && e.activations > ACT_SPLIT_RANGE / 2,
          "one image over several buffers: chunk %d, %llu bytes of activations", e.chunk,
          (unsigned long long)e.activations);
    ddpm_model_free(m);
}

/* A full sampling run on Vulkan and on the CPU with the same seed. */
static void test_sampling(const char *tag, ddpm_sampler_kind kind, int steps, int n, int precision,
                          int baseline)
{
    char name[96], what[200];
    snprintf(name, sizeof name, "unet_%s.safetensors", tag);
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path(name), &m);
    CHECK(r == DDPM_OK, "load %s: %s", name, ddpm_last_error());
    if (r != DDPM_OK)
        return;
    int c, h, w;
    ddpm_model_image_shape(m, &c, &h, &w);
    size_t total = (size_t)n * c * h * w;
    float *gpu = calloc(total, sizeof(float)), *cpu = calloc(total, sizeof(float));
    ddpm_sample_opts o;
    ddpm_sample_opts_default(&o);
    o.sampler = kind;
    o.steps = steps;
    o.eta = kind == DDPM_SAMPLER_DDIM ? 0.5f : 0.0f;
    o.seed = 12345;
    o.n = n;
    o.first_index = 5;
    o.precision = precision;
    o.baseline_limits = baseline;
    o.device = spec ? spec : "0";
    r = ddpm_sample(m, &o, gpu);
    CHECK(r == DDPM_OK, "sample on Vulkan: %s", ddpm_last_error());
    o.device = "cpu";
    r = r ? r : ddpm_sample(m, &o, cpu);
    CHECK(r == DDPM_OK, "sample on the CPU: %s", ddpm_last_error());
    float tol = precision == 16 ? SAMPLE16 : SAMPLE32;
    snprintf(what, sizeof what, "unet_%s %s %d steps (eta %g), %d images, %s%s: Vulkan vs CPU", tag,
             kind == DDPM_SAMPLER_DDPM ? "ddpm" : "ddim", steps, (double)o.eta, n,
             precision == 16 ? "fp16" : "fp32", baseline ? ", baseline limits" : "");
    CHECK(r == DDPM_OK && test_close(what, gpu, cpu, (int64_t)total, tol, tol), "%s", what);
    free(gpu);
    free(cpu);
    ddpm_model_free(m);
}

/* Two starts with the same cache directory: the first writes the cache file, the second reads it
 * (non-empty) and creates every pipeline from it without error. */
static void test_pipeline_cache(void)
{
    char dir[] = "/tmp/ddpm-vk-cache-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temporary cache directory");
    setenv("DDPM_CACHE_DIR", dir, 1);
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "load");
    char path[1100] = "";
    size_t first_size = 0;
    for (int run = 0; run < 2 && r == DDPM_OK; run++) {
        vk_context ctx;
        r = vk_context_create(spec, &ctx);
        CHECK(r == DDPM_OK, "context: %s", ddpm_last_error());
        if (r != DDPM_OK)
            break;
        snprintf(path, sizeof path, "%s", ctx.cache_path);
        /* a file of an older shader build for this device (same name up to the hash) and one of another
         * device: the first save removes the former and keeps the latter */
        char stale[1200], other[1200];
        snprintf(stale, sizeof stale, "%.*s-0123456789abcdef.bin", (int)(strrchr(path, '-') - path), path);
        snprintf(other, sizeof other, "%s/pipelines-ffff-ffff-00000000-00-0123456789abcdef.bin", dir);
        if (run == 0) {
            FILE *f1 = fopen(stale, "wb"), *f2 = fopen(other, "wb");
            CHECK(f1 && f2, "stale cache files created");
            if (f1)
                fclose(f1);
            if (f2)
                fclose(f2);
        }
        CHECK(strncmp(ctx.cache_path, dir, strlen(dir)) == 0, "cache file %s is in %s", ctx.cache_path, dir);
        if (run == 1)
            CHECK(ctx.cache_loaded == first_size && first_size > 0,
                  "second start read the cache file: %zu bytes (file %zu bytes)", ctx.cache_loaded,
                  first_size);
        else
            CHECK(ctx.cache_loaded == 0, "first start: no cache yet (%zu bytes)", ctx.cache_loaded);
        vk_buffer xb = {0}, ob = {0}, cb = {0}, sb = {0};
        vk_unet *u = NULL;
        size_t nx = (size_t)value_numel(&m->graph.values[m->graph.input]) * 4;
        r = vk_buffer_create(&ctx, nx, VK_MEM_DEVICE, "x", &xb);
        r = r ? r : vk_buffer_create(&ctx, nx, VK_MEM_DEVICE, "out", &ob);
        r = r ? r : vk_buffer_create(&ctx, DDPM_COEF_STRIDE * 4, VK_MEM_DEVICE, "coef", &cb);
        r = r ? r : vk_buffer_create(&ctx, 4, VK_MEM_HOST, "step", &sb);
        vk_unet_desc d = {.graph = &m->graph,
                          .weights = (const float *const *)m->weights,
                          .chunk = 1,
                          .x = &xb,
                          .out = &ob,
                          .coef = &cb,
                          .step = &sb};
        r = r ? r : vk_unet_create(&ctx, &d, &u);
        CHECK(r == DDPM_OK, "run %d: pipelines %s cache: %s", run + 1, run ? "from the" : "into the",
              ddpm_last_error());
        printf("run %d: %u pipelines in %.1f ms, %u reported as cache hits (creation feedback %s), %zu bytes "
               "loaded\n",
               run + 1, ctx.pipelines_created, ctx.pipeline_ms, ctx.pipelines_cached,
               ctx.creation_feedback ? "on" : "not available", ctx.cache_loaded);
        if (run == 1 && ctx.creation_feedback && ctx.pipelines_cached > 0)
            CHECK(ctx.pipelines_cached == ctx.pipelines_created,
                  "every pipeline of the second run is a cache hit");
        vk_unet_destroy(u);
        vk_buffer_destroy(&ctx, &xb);
        vk_buffer_destroy(&ctx, &ob);
        vk_buffer_destroy(&ctx, &cb);
        vk_buffer_destroy(&ctx, &sb);
        vk_context_destroy(&ctx); /* saves the cache */
        struct stat st;
        CHECK(stat(path, &st) == 0 && st.st_size > 0, "cache file %s written (%lld bytes)", path,
              (long long)(stat(path, &st) == 0 ? st.st_size : -1));
        if (run == 0) {
            first_size = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
            CHECK(stat(stale, &st) != 0, "the older shader build's cache file is removed");
            CHECK(stat(other, &st) == 0, "another device's cache file is kept");
            unlink(other);
        }
    }
    unlink(path);
    rmdir(dir);
    unsetenv("DDPM_CACHE_DIR");
    setenv("DDPM_CACHE_DIR", "0", 1);
    ddpm_model_free(m);
}

/* A batch whose state exceeds the device: refused at creation, naming the largest batch that fits,
 * which the memory plan confirms. */
static void test_too_large(void)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "load");
    if (r != DDPM_OK)
        return;
    ddpm_sample_opts o;
    ddpm_sample_opts_default(&o);
    o.n = 60000; /* 60000 x 3 x 16 x 16 floats = 184 MB of state: above a 128 MiB buffer range */
    o.precision = 32;
    sampler_plan plan = {0};
    backend *b = NULL;
    r = sampler_plan_make(&m->schedule, &o, &plan);
    CHECK(r == DDPM_OK, "plan");
    r = vk_backend_create(m, &plan, &o, spec, &b);
    const char *msg = ddpm_last_error();
    const char *at = strstr(msg, "largest batch that fits is ");
    int fit = at ? atoi(at + strlen("largest batch that fits is ")) : -1;
    CHECK(r == DDPM_ERR_NOMEM && b == NULL && fit > 0 && fit < o.n, "60000 images refused: %s (%s)",
          ddpm_result_string(r), msg);
    printf("refusal: %s\n", msg);
    if (b)
        b->destroy(b);
    vk_context ctx;
    if (fit > 0 && vk_context_create(spec, &ctx) == DDPM_OK) {
        uint64_t budget = 0, range = ctx.limits.max_storage_range;
        for (uint32_t i = 0; i < ctx.info.mem.memoryHeapCount; i++)
            if ((ctx.info.mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
                ctx.info.mem.memoryHeaps[i].size > budget)
                budget = ctx.info.mem.memoryHeaps[i].size;
        CHECK(vk_plan_max_batch(&m->graph, fit, 4, range, plan.n_steps, budget) == fit &&
                  vk_plan_max_batch(&m->graph, fit + 1, 4, range, plan.n_steps, budget) == fit,
              "%d images fit, %d do not", fit, fit + 1);
        vk_context_destroy(&ctx);
    }
    sampler_plan_free(&plan);
    ddpm_model_free(m);
}

int main(void)
{
    setenv("DDPM_VALIDATION", "1", 0);
    setenv("DDPM_CACHE_DIR", "0", 1);
    spec = getenv("DDPM_DEVICE");
    if (spec && strcmp(spec, "cpu") == 0)
        spec = NULL;
    vk_context ctx;
    ddpm_result r = vk_context_create(spec, &ctx);
    if (r != DDPM_OK) {
        CHECK(0, "no Vulkan device (%s): %s; this test needs one (lavapipe works)", ddpm_result_string(r),
              ddpm_last_error());
        return test_summary("vk_unet");
    }
    CHECK(ctx.inst.validation, "the validation layer must be on");
    printf("device: %s (%s)\n", ctx.name, ctx.info.driver_name);
    const char *tags[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        test_forward(&ctx, tags[i], 0, "fp32");
        if (ctx.limits.storage16)
            test_forward(&ctx, tags[i], 1, "fp16");
    }
    test_chunks(&ctx);
    vk_context_destroy(&ctx);
    r = vk_context_create(spec, &ctx);
    if (r == DDPM_OK) {
        vk_context_clamp_baseline(&ctx);
        test_forward(&ctx, "a", 0, "fp32 baseline");
        test_forward(&ctx, "b", 1, "fp16 baseline");
        vk_context_destroy(&ctx);
    }

    test_split(1, 0);
    test_split(2, ACT_SPLIT_RANGE);
    test_split_plan();
    test_sampling("a", DDPM_SAMPLER_DDPM, 40, 3, 32, 0);
    test_sampling("a", DDPM_SAMPLER_DDIM, 20, 3, 32, 0);
    test_sampling("a", DDPM_SAMPLER_DDIM, 10, 2, 16, 0);
    test_sampling("b", DDPM_SAMPLER_DDIM, 10, 2, 32, 1);
    test_sampling("d", DDPM_SAMPLER_DDPM, 1000, 3, 32, 0);
    test_pipeline_cache();
    test_too_large();
    CHECK(vk_validation_message_count() == 0, "validation messages: %u", vk_validation_message_count());
    return test_summary("vk_unet");
}
