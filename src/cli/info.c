/* info.c: `ddpm-vk info`: a model's config, noise schedule, parameter count and compute per image,
 * and with --nodes the U-Net graph node by node (op, output shape, params, MFLOPs). */
#include "cli.h"
#include "model.h"
#include "vk/plan.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: ddpm-vk info [--model FILE] [-n N] [--nodes]\n"
    "\n"
    "Shows a model's config, noise schedule, parameter count, GFLOPs per image and the Vulkan device\n"
    "memory a batch needs.\n"
    "  --model FILE   ddpm-vk safetensors weights (default: " DDPM_DEFAULT_MODEL ")\n"
    "  -n N           images per run for the memory figures (default: 1)\n"
    "  --nodes        also list every graph node: name, op, output shape, params, MFLOPs\n";

static const char *beta_name(ddpm_beta_kind k)
{
    switch (k) {
    case BETA_LINEAR: return "linear";
    case BETA_SCALED_LINEAR: return "scaled_linear";
    case BETA_SQUAREDCOS_CAP_V2: return "squaredcos_cap_v2";
    case BETA_QUAD: return "quad";
    case BETA_SIGMOID: return "sigmoid";
    }
    return "?";
}

static const char *prediction_name(ddpm_prediction p)
{
    switch (p) {
    case PRED_EPSILON: return "epsilon";
    case PRED_SAMPLE: return "sample";
    case PRED_V: return "v_prediction";
    }
    return "?";
}

static void print_levels(const char *label, const int *v, int n)
{
    printf("%s[", label);
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", v[i]);
    printf("]");
}

static void print_model(const char *path, const struct ddpm_model *m)
{
    const ddpm_unet_config *c = &m->config;
    const ddpm_schedule_config *s = &m->schedule;
    const ddpm_graph *g = &m->graph;
    printf("model:      %s\n", path);
    printf("image:      %d x %d x %d (channels x height x width), out_channels %d\n", c->in_channels,
           c->sample_size, c->sample_size, c->out_channels);
    print_levels("unet:       block_out_channels ", c->block_out_channels, c->levels);
    printf(", layers_per_block %d\n", c->layers_per_block);
    print_levels("            attention down ", c->down_attn, c->levels);
    print_levels(", up ", c->up_attn, c->levels);
    printf(", mid %s, ", c->mid_attn ? "yes" : "no");
    if (c->attention_head_dim > 0)
        printf("head dim %d\n", c->attention_head_dim);
    else
        printf("one head\n");
    printf("            groups %d, eps %g, downsample_padding %d, freq_shift %g, flip_sin_to_cos %s, "
           "mid_block_scale_factor %g\n",
           c->norm_num_groups, c->norm_eps, c->downsample_padding, c->freq_shift,
           c->flip_sin_to_cos ? "yes" : "no", c->mid_block_scale_factor);
    printf("schedule:   %s betas %g .. %g, T %d, variance %s, clip %s", beta_name(s->beta_schedule),
           s->beta_start, s->beta_end, s->num_train_timesteps,
           s->variance_type == VAR_FIXED_LARGE ? "fixed_large" : "fixed_small",
           s->clip_sample ? "yes" : "no");
    if (s->clip_sample)
        printf(" (range %g)", s->clip_sample_range);
    printf(", prediction %s, steps_offset %d, set_alpha_to_one %s\n", prediction_name(s->prediction_type),
           s->steps_offset, s->set_alpha_to_one ? "yes" : "no");
    printf("params:     %lld (%.2f MiB as float32) in %d tensors\n", (long long)g->n_weights,
           (double)g->n_weights * 4.0 / (1024.0 * 1024.0), g->n_params);
    printf("compute:    %.4f GFLOPs per image per U-Net evaluation (%d nodes)\n", (double)g->flops / 1e9,
           g->n_nodes);
}

/* Peak device memory of a Vulkan run of n images in fp32 and fp16, for a 2^27-byte storage buffer range
 * (the Android baseline floor, also lavapipe's): larger batches run the U-Net in chunks; one image whose
 * activations exceed the range spreads them over several buffers. */
static int print_memory(const ddpm_graph *g, int n)
{
    for (int elem = 4; elem >= 2; elem -= 2) {
        vk_mem_estimate e;
        if (vk_plan_memory(g, n, elem, (uint64_t)1 << 27, 1000, &e) != DDPM_OK) {
            cli_error("info: %s", ddpm_last_error());
            return 0;
        }
        const double mib = 1024.0 * 1024.0;
        if (e.chunk == 0) {
            printf("memory:     %s: one image needs %.2f MiB of activations, one tensor of them above the "
                   "storage buffer range\n",
                   elem == 4 ? "fp32" : "fp16", (double)e.activations / mib);
            continue;
        }
        printf("memory:     %s, %d image%s: %.2f MiB peak on the device (weights %.2f, activations %.2f for "
               "%d image%s per U-Net pass, state %.2f)\n",
               elem == 4 ? "fp32" : "fp16", n, n == 1 ? "" : "s", (double)e.total / mib,
               (double)e.weights / mib, (double)e.activations / mib, e.chunk, e.chunk == 1 ? "" : "s",
               (double)e.state / mib);
    }
    return 1;
}

static void print_nodes(const ddpm_graph *g)
{
    int name_w = 4;
    for (int i = 0; i < g->n_nodes; i++) {
        int l = (int)strnlen(g->nodes[i].name, DDPM_MAX_NAME);
        if (l > name_w)
            name_w = l;
    }
    printf("\n%4s  %-*s  %-10s  %-16s  %10s  %10s\n", "#", name_w, "name", "op", "output (CxHxW)", "params",
           "MFLOPs");
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        int64_t params = 0;
        for (int k = 0; k < 2; k++)
            if (n->w[k] >= 0 && n->w[k] < g->n_params)
                params += g->params[n->w[k]].numel;
        char shape[48] = "?";
        if (n->out >= 0 && n->out < g->n_values) {
            const ddpm_value *v = &g->values[n->out];
            snprintf(shape, sizeof shape, "%dx%dx%d", v->c, v->h, v->w);
        }
        const char *op = (unsigned)n->op < OP_COUNT ? ddpm_op_names[n->op] : "?";
        printf("%4d  %-*.*s  %-10s  %-16s  %10lld  %10.3f\n", i, name_w, DDPM_MAX_NAME, n->name, op, shape,
               (long long)params, (double)n->flops / 1e6);
    }
    printf("%4s  %-*s  %-10s  %-16s  %10lld  %10.3f\n", "", name_w, "total", "", "", (long long)g->n_weights,
           (double)g->flops / 1e6);
}

int cli_info(int argc, char **argv)
{
    const char *path = DDPM_DEFAULT_MODEL;
    int nodes = 0, n = 1;
    for (int i = 1; i < argc; i++) {
        const char *val;
        int k;
        if (cli_flag(argv[i], "--help", "-h")) {
            fputs(usage, stdout);
            return CLI_OK;
        } else if (cli_flag(argv[i], "--nodes", NULL)) {
            nodes = 1;
        } else if ((k = cli_value(argc, argv, &i, "-n", NULL, &val)) != 0) {
            if (k < 0 || !cli_parse_int("-n", val, 1, 65536, &n))
                return CLI_USAGE;
        } else if ((k = cli_value(argc, argv, &i, "--model", "-m", &val)) != 0) {
            if (k < 0)
                return CLI_USAGE;
            path = val;
        } else {
            return cli_unknown("info", argv[i]);
        }
    }
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(path, &m);
    if (r != DDPM_OK) {
        cli_error("cannot load model: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        return CLI_FAIL;
    }
    print_model(path, m);
    if (!print_memory(&m->graph, n)) {
        ddpm_model_free(m);
        return CLI_FAIL;
    }
    if (nodes)
        print_nodes(&m->graph);
    ddpm_model_free(m);
    if (fflush(stdout) != 0) {
        cli_error("info: cannot write to stdout");
        return CLI_FAIL;
    }
    return CLI_OK;
}
