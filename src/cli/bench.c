/* bench.c: `ddpm-vk bench`: ms per sampling step and GFLOP/s (from the graph's FLOP count) on a Vulkan
 * device or the CPU backend, and with --layers the time of every U-Net node. */
#include "cli.h"
#include "common.h"
#include "cpu/cpu.h"
#include "sampler.h"
#include "vk/plan.h"
#include "vk/vk_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: ddpm-vk bench [options]\n"
    "\n"
    "Times sampling steps (U-Net + update, state on the device) and prints ms per step and GFLOP/s.\n"
    "  --model FILE       ddpm-vk safetensors weights (default: " DDPM_DEFAULT_MODEL ")\n"
    "  -n N               images per step (default: 1)\n"
    "  --device D         cpu, or a Vulkan device index or name substring (default: the best device)\n"
    "  --steps N          timed steps after one warm-up step (default: 5)\n"
    "  --precision P      Vulkan storage: auto, fp32 or fp16 (default: auto)\n"
    "  --limits L         default, or baseline: the Android baseline 2022 limits\n"
    "  --layers           also time every U-Net node alone (ms and GFLOP/s per node)\n";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void on_log(void *user, const char *msg)
{
    (void)user;
    fprintf(stderr, "ddpm-vk: %s\n", msg);
}

/* The time of every node on the CPU (activations of a whole forward kept). */
static ddpm_result layers_cpu(const ddpm_model *m, int B, double *ms)
{
    const ddpm_graph *g = &m->graph;
    ddpm_result res = DDPM_OK;
    float **vals = ddpm_calloc((size_t)g->n_values, sizeof *vals);
    if (!vals)
        return DDPM_ERR_NOMEM;
    for (int v = 0; v < g->n_values; v++) {
        size_t n = (size_t)(B * value_numel(&g->values[v]));
        vals[v] = calloc(n, sizeof(float));
        if (!vals[v]) {
            res = ddpm_fail(DDPM_ERR_NOMEM, "bench: out of memory for the layer table");
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++)
            vals[v][i] = (float)((i * 2654435761u) % 2000u) * 1e-3f - 1.0f;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        double t0 = now_ms();
        int reps = 0;
        do {
            cpu_node_forward(g, &g->nodes[i], vals, (const float *const *)m->weights, B);
            reps++;
        } while (now_ms() - t0 < 20.0 && reps < 100);
        ms[i] = (now_ms() - t0) / reps;
    }
cleanup:
    for (int v = 0; v < g->n_values; v++)
        free(vals[v]);
    free(vals);
    return res;
}

/* The time of every node on the GPU: each node recorded alone, reps times in one command buffer. The
 * activations keep the sampler's memory plan (a node may read a buffer a later node reused: finite
 * values all the same, and the same amount of work). */
static ddpm_result layers_vk(const ddpm_model *m, int B, const char *device, int precision, int baseline,
                             double *ms)
{
    ddpm_result res = DDPM_OK;
    const ddpm_graph *g = &m->graph;
    vk_context ctx;
    vk_unet *u = NULL;
    vk_buffer x = {0}, out = {0}, coef = {0}, step = {0};
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    TRY(vk_context_create(device, &ctx));
    if (baseline)
        vk_context_clamp_baseline(&ctx);
    int fp16 = precision == 16 || (precision == 0 && ctx.limits.storage16 &&
                                   ctx.info.props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU);
    size_t nx = (size_t)(B * value_numel(&g->values[g->input])) * 4;
    size_t no = (size_t)(B * value_numel(&g->values[g->output])) * 4;
    float coef_row[DDPM_COEF_STRIDE] = {0};
    coef_row[DDPM_COEF_T] = 500.0f;
    TRY(vk_buffer_create(&ctx, nx, VK_MEM_DEVICE, "x", &x));
    TRY(vk_buffer_create(&ctx, no, VK_MEM_DEVICE, "out", &out));
    TRY(vk_buffer_create(&ctx, sizeof coef_row, VK_MEM_DEVICE, "coef", &coef));
    TRY(vk_buffer_create(&ctx, 4, VK_MEM_HOST, "step", &step));
    TRY(vk_buffer_upload(&ctx, &coef, 0, coef_row, sizeof coef_row));
    memset(step.mapped, 0, 4);
    vk_unet_desc d = {.graph = g,
                      .weights = (const float *const *)m->weights,
                      .chunk = B,
                      .fp16 = fp16,
                      .x = &x,
                      .out = &out,
                      .coef = &coef,
                      .step = &step};
    TRY(vk_unet_create(&ctx, &d, &u));
    TRY(vk_cmd_alloc(&ctx, &cmd));
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VK_TRY(vkBeginCommandBuffer(cmd, &bi));
    TRY(vk_unet_record(u, cmd, 0, B)); /* every value written once */
    VK_TRY(vkEndCommandBuffer(cmd));
    TRY(vk_submit_wait(&ctx, cmd));
    for (int i = 0; i < g->n_nodes; i++) {
        int reps = 1;
        for (;;) {
            VK_TRY(vkResetCommandBuffer(cmd, 0));
            VK_TRY(vkBeginCommandBuffer(cmd, &bi));
            for (int r = 0; r < reps; r++) {
                vk_barrier_compute(cmd);
                TRY(vk_unet_record_node(u, cmd, i, B));
            }
            VK_TRY(vkEndCommandBuffer(cmd));
            double t0 = now_ms();
            TRY(vk_submit_wait(&ctx, cmd));
            double t = now_ms() - t0;
            if (t > 20.0 || reps >= 64) {
                ms[i] = t / reps;
                break;
            }
            reps *= 4;
        }
    }
cleanup:
    if (ctx.device) {
        vkDeviceWaitIdle(ctx.device);
        vk_unet_destroy(u);
        vk_buffer_destroy(&ctx, &x);
        vk_buffer_destroy(&ctx, &out);
        vk_buffer_destroy(&ctx, &coef);
        vk_buffer_destroy(&ctx, &step);
    }
    vk_context_destroy(&ctx);
    return res;
}

static void print_layers(const ddpm_graph *g, int B, const double *ms)
{
    double total = 0;
    for (int i = 0; i < g->n_nodes; i++)
        total += ms[i];
    printf("\n%4s  %-44s  %-10s  %-14s  %9s  %9s  %6s\n", "#", "node", "op", "output", "ms", "GFLOP/s",
           "share");
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        const ddpm_value *v = &g->values[n->out];
        char shape[48];
        snprintf(shape, sizeof shape, "%dx%dx%d", v->c, v->h, v->w);
        double gf = ms[i] > 0 ? (double)n->flops * B / (ms[i] * 1e6) : 0.0;
        printf("%4d  %-44.44s  %-10s  %-14s  %9.3f  %9.2f  %5.1f%%\n", i, n->name, ddpm_op_names[n->op],
               shape, ms[i], gf, total > 0 ? 100.0 * ms[i] / total : 0.0);
    }
    printf("%4s  %-44s  %-10s  %-14s  %9.3f  %9.2f\n", "", "sum of nodes", "", "", total,
           total > 0 ? (double)g->flops * B / (total * 1e6) : 0.0);
}

int cli_bench(int argc, char **argv)
{
    const char *path = DDPM_DEFAULT_MODEL, *device = NULL;
    int n = 1, steps = 5, precision = 0, baseline = 0, layers = 0;
    for (int i = 1; i < argc; i++) {
        const char *val;
        int k;
        if (cli_flag(argv[i], "--help", "-h")) {
            fputs(usage, stdout);
            return CLI_OK;
        } else if (cli_flag(argv[i], "--layers", NULL)) {
            layers = 1;
        } else if ((k = cli_value(argc, argv, &i, "--model", "-m", &val)) != 0) {
            if (k < 0)
                return CLI_USAGE;
            path = val;
        } else if ((k = cli_value(argc, argv, &i, "--device", "-d", &val)) != 0) {
            if (k < 0)
                return CLI_USAGE;
            device = val;
        } else if ((k = cli_value(argc, argv, &i, "-n", NULL, &val)) != 0) {
            if (k < 0 || !cli_parse_int("-n", val, 1, 65536, &n))
                return CLI_USAGE;
        } else if ((k = cli_value(argc, argv, &i, "--steps", NULL, &val)) != 0) {
            if (k < 0 || !cli_parse_int("--steps", val, 1, 100000, &steps))
                return CLI_USAGE;
        } else if ((k = cli_value(argc, argv, &i, "--precision", NULL, &val)) != 0) {
            if (k < 0 || !cli_parse_precision(val, &precision))
                return CLI_USAGE;
        } else if ((k = cli_value(argc, argv, &i, "--limits", NULL, &val)) != 0) {
            if (k < 0 || !cli_parse_limits(val, &baseline))
                return CLI_USAGE;
        } else {
            return cli_unknown("bench", argv[i]);
        }
    }
    if (!device || !*device)
        device = getenv("DDPM_DEVICE");
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(path, &m);
    if (r != DDPM_OK) {
        cli_error("cannot load model: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        return CLI_FAIL;
    }
    int status = CLI_FAIL;
    sampler_plan plan = {0};
    backend *b = NULL;
    double *ms = NULL;
    ddpm_sample_opts o;
    ddpm_sample_opts_default(&o);
    o.sampler = DDPM_SAMPLER_DDIM;
    o.steps = steps + 1;
    o.n = n;
    o.seed = 1;
    o.precision = precision;
    o.baseline_limits = baseline;
    o.log = on_log;
    int cpu = device && strcmp(device, "cpu") == 0;
    r = sampler_plan_make(&m->schedule, &o, &plan);
    if (r == DDPM_OK)
        r = cpu ? cpu_backend_create(m, &plan, &o, &b) : vk_backend_create(m, &plan, &o, device, &b);
    if (r == DDPM_OK)
        r = b->start(b, NULL);
    if (r == DDPM_OK)
        r = b->step(b, 0); /* warm-up */
    double t0 = now_ms();
    for (int i = 1; i <= steps && r == DDPM_OK; i++)
        r = b->step(b, i);
    double per_step = (now_ms() - t0) / steps;
    if (r != DDPM_OK) {
        cli_error("bench: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        goto cleanup;
    }
    const ddpm_graph *g = &m->graph;
    printf("model:   %s (%lld params, %.4f GFLOP per image per U-Net evaluation)\n", path,
           (long long)g->n_weights, (double)g->flops / 1e9);
    printf("device:  %s\n", b->name ? b->name : "?");
    printf("batch %d, %d timed steps: %.2f ms per step, %.2f ms per image, %.2f GFLOP/s\n", n, steps,
           per_step, per_step / n, (double)g->flops * n / (per_step * 1e6));
    if (layers) {
        b->destroy(b);
        b = NULL;
        ms = calloc((size_t)g->n_nodes, sizeof *ms);
        if (!ms)
            goto cleanup;
        r = cpu ? layers_cpu(m, n, ms) : layers_vk(m, n, device, precision, baseline, ms);
        if (r != DDPM_OK) {
            cli_error("bench: %s", ddpm_last_error());
            goto cleanup;
        }
        print_layers(g, n, ms);
    }
    status = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
cleanup:
    free(ms);
    if (b)
        b->destroy(b);
    sampler_plan_free(&plan);
    ddpm_model_free(m);
    return status;
}
