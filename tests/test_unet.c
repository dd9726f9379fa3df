/* test_unet.c: the U-Net graph and the CPU forward against the torch rebuild of diffusers' UNet2DModel
 * (tests/torch_ref/unet.py): tensor names and shapes, layer counts, parameter counts, whole forwards. */
#include "config.h"
#include "cpu/cpu.h"
#include "graph.h"
#include "model.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Tolerance of the whole fp32 forward against torch's float64 forward. The CPU is within ~4e-7 on these
 * fixtures; this is tight enough to catch a GroupNorm eps off by 10x (errors ~1e-5 .. 1e-4). */
#define UNET_ATOL 1e-5f
#define UNET_RTOL 1e-4f

static int count_op(const ddpm_graph *g, ddpm_op op)
{
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++)
        n += g->nodes[i].op == op;
    return n;
}

static int json_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* The graph's layers against torch's module counts (JSON {"Conv2d": n, ...}): attention's to_q, to_k,
 * to_v and to_out.0 are nn.Linear in torch and 1x1 CONV2D nodes here; every resnet also owns a
 * time_emb_proj Linear; the rest maps one to one. */
static void check_layers(const char *what, const ddpm_graph *g, const ddpm_unet_config *c,
                         const char *modules)
{
    cJSON *m = modules ? cJSON_Parse(modules) : NULL;
    CHECK(m != NULL, "%s: module counts missing from the fixture", what);
    if (!m)
        return;
    int conv = json_int(m, "Conv2d"), lin = json_int(m, "Linear"), gn = json_int(m, "GroupNorm");
    int attn = json_int(m, "Attention"), up = json_int(m, "Upsample2D");
    cJSON_Delete(m);
    CHECK(count_op(g, OP_CONV2D) == conv + 4 * attn,
          "%s: %d conv2d nodes, torch %d Conv2d + 4 x %d attention", what, count_op(g, OP_CONV2D), conv,
          attn);
    CHECK(count_op(g, OP_LINEAR) == lin - 4 * attn, "%s: %d linear nodes, torch %d Linear - 4 x %d attention",
          what, count_op(g, OP_LINEAR), lin, attn);
    CHECK(count_op(g, OP_GROUPNORM) == gn, "%s: %d groupnorm nodes, torch %d", what,
          count_op(g, OP_GROUPNORM), gn);
    CHECK(count_op(g, OP_ATTENTION) == attn, "%s: %d attention nodes, torch %d", what,
          count_op(g, OP_ATTENTION), attn);
    CHECK(count_op(g, OP_UPSAMPLE) == up, "%s: %d upsample nodes, torch %d", what, count_op(g, OP_UPSAMPLE),
          up);
    int cats = c->levels * (c->layers_per_block + 1);
    CHECK(count_op(g, OP_CONCAT) == cats, "%s: %d concat nodes, want %d", what, count_op(g, OP_CONCAT), cats);
    CHECK(count_op(g, OP_TIME_EMBED) == 1 && count_op(g, OP_SILU) == 2, "%s: time embedding nodes", what);
    int total = conv + lin + gn + attn + up + cats + 3; /* + time_proj and two SiLUs */
    CHECK(g->n_nodes == total, "%s: %d nodes, want %d", what, g->n_nodes, total);
}

/* Structural invariants: each weighted node's params are "<node name>.weight" / ".bias"; every input is
 * written by an earlier node (or is x / t); the output is the last value written. */
static void check_structure(const char *what, const ddpm_graph *g)
{
    char *written = calloc((size_t)g->n_values, 1);
    int bad_names = 0, bad_order = 0;
    written[g->input] = written[g->timestep] = 1;
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        for (int k = 0; k < 2; k++) {
            if (n->w[k] < 0)
                continue;
            char want[DDPM_MAX_NAME + 8];
            snprintf(want, sizeof want, "%s.%s", n->name, k == 0 ? "weight" : "bias");
            if (strcmp(g->params[n->w[k]].name, want) != 0 && bad_names++ < 3)
                printf("  %s: node %s has param %s\n", what, n->name, g->params[n->w[k]].name);
        }
        for (int k = 0; k < 3; k++)
            if (n->in[k] >= 0 && !written[n->in[k]] && bad_order++ < 3)
                printf("  %s: node %s reads value %d before it is written\n", what, n->name, n->in[k]);
        if (written[n->out] && bad_order++ < 3)
            printf("  %s: node %s writes value %d twice\n", what, n->name, n->out);
        written[n->out] = 1;
    }
    free(written);
    CHECK(bad_names == 0, "%s: %d params not named after their node", what, bad_names);
    CHECK(bad_order == 0, "%s: %d values read before written or written twice", what, bad_order);
    CHECK(g->n_nodes > 0 && g->nodes[g->n_nodes - 1].out == g->output, "%s: output is the last node's", what);
    int64_t sum = 0, flops = 0;
    for (int i = 0; i < g->n_params; i++)
        sum += g->params[i].numel;
    for (int i = 0; i < g->n_nodes; i++)
        flops += g->nodes[i].flops;
    CHECK(sum == g->n_weights && flops == g->flops, "%s: totals are the sums over params / nodes", what);
}

/* The model file's tensors are exactly the graph's params: same names, same torch shapes. */
static void check_names(const char *what, const ddpm_graph *g, const st_file *f)
{
    int missing = 0, bad_shape = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        int p = graph_find_param(g, t->name);
        if (p < 0) {
            if (missing++ < 3)
                printf("  %s: torch tensor %s has no graph param\n", what, t->name);
            continue;
        }
        int same = g->params[p].ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = g->params[p].shape[d] == t->shape[d];
        if (!same && bad_shape++ < 3)
            printf("  %s: %s has another shape in the graph\n", what, t->name);
    }
    CHECK(missing == 0, "%s: %d torch tensors unknown to the graph", what, missing);
    CHECK(bad_shape == 0, "%s: %d shapes differ from torch's", what, bad_shape);
    CHECK(g->n_params == f->n_tensors, "%s: graph has %d params, torch state_dict %d tensors", what,
          g->n_params, f->n_tensors);
}

static void test_fixture(const char *tag)
{
    char name[160], what[32];
    snprintf(what, sizeof what, "unet_%s", tag);
    snprintf(name, sizeof name, "unet_%s.safetensors", tag);
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path(name), &m);
    CHECK(r == DDPM_OK, "%s: load: %s", what, ddpm_last_error());
    if (r != DDPM_OK)
        return;
    const ddpm_graph *g = &m->graph;
    st_file weights;
    test_open_fixture(name, &weights);
    check_names(what, g, &weights);
    st_close(&weights);
    check_structure(what, g);

    snprintf(name, sizeof name, "unet_%s_io.safetensors", tag);
    st_file io;
    test_open_fixture(name, &io);
    const char *params = st_meta_get(&io, "params");
    CHECK(params && g->n_weights == atoll(params), "%s: %lld params, torch %s", what, (long long)g->n_weights,
          params ? params : "?");
    check_layers(what, g, &m->config, st_meta_get(&io, "modules"));

    int64_t nx, nt, nout;
    float *x = test_tensor(&io, "x", &nx), *t = test_tensor(&io, "t", &nt),
          *want = test_tensor(&io, "out", &nout);
    int B = (int)nt;
    CHECK(B == 2 && nx == B * value_numel(&g->values[g->input]) &&
              nout == B * value_numel(&g->values[g->output]),
          "%s: fixture shapes match the graph", what);
    if (B == 2 && nx == B * value_numel(&g->values[g->input]) &&
        nout == B * value_numel(&g->values[g->output])) {
        float *got = malloc((size_t)nout * sizeof(float));
        r = cpu_unet_forward(g, (const float *const *)m->weights, B, x, t, got);
        CHECK(r == DDPM_OK, "%s: forward: %s", what, ddpm_last_error());
        snprintf(name, sizeof name, "%s forward (B=2, t=%g,%g)", what, t[0], t[1]);
        test_close(name, got, want, nout, UNET_ATOL, UNET_RTOL);

        /* batch items are independent: item 1 alone equals item 1 of the batch */
        int64_t per_out = nout / B, per_in = nx / B;
        float *one = malloc((size_t)per_out * sizeof(float));
        r = cpu_unet_forward(g, (const float *const *)m->weights, 1, x + per_in, t + 1, one);
        CHECK(r == DDPM_OK, "%s: forward B=1: %s", what, ddpm_last_error());
        snprintf(name, sizeof name, "%s item 1 alone vs in the batch", what);
        test_close(name, one, got + per_out, per_out, 1e-6f, 1e-6f);
        free(one);
        free(got);
    }
    free(x);
    free(t);
    free(want);
    st_close(&io);
    ddpm_model_free(m);
}

/* The real DDPM configs: graph_build's parameter count and layer counts against torch's. */
static void test_big(const st_file *counts, const char *tag)
{
    char key[64];
    snprintf(key, sizeof key, "%s.config", tag);
    const char *json = st_meta_get(counts, key);
    CHECK(json != NULL, "%s: config in unet_counts", tag);
    if (!json)
        return;
    ddpm_unet_config c;
    unet_config_default(&c);
    ddpm_result r = unet_config_from_json(json, strlen(json), &c);
    CHECK(r == DDPM_OK, "%s: config: %s", tag, ddpm_last_error());
    ddpm_graph g;
    r = r == DDPM_OK ? graph_build(&c, &g) : r;
    CHECK(r == DDPM_OK, "%s: graph_build: %s", tag, ddpm_last_error());
    if (r != DDPM_OK)
        return;
    snprintf(key, sizeof key, "%s.params", tag);
    const char *params = st_meta_get(counts, key);
    CHECK(params && g.n_weights == atoll(params), "%s: graph_build counts %lld params, torch %s", tag,
          (long long)g.n_weights, params ? params : "?");
    snprintf(key, sizeof key, "%s.modules", tag);
    check_layers(tag, &g, &c, st_meta_get(counts, key));
    check_structure(tag, &g);
    printf("%s (%dx%d): %d nodes, %d params = %lld weights (torch %s), %.3f GFLOP per image\n", tag,
           c.sample_size, c.sample_size, g.n_nodes, g.n_params, (long long)g.n_weights, params ? params : "?",
           g.flops * 1e-9);
    printf("  %s GFLOP per image by op:", tag);
    for (int op = 0; op < OP_COUNT; op++) {
        int64_t f = 0;
        for (int i = 0; i < g.n_nodes; i++)
            f += g.nodes[i].op == (ddpm_op)op ? g.nodes[i].flops : 0;
        printf(" %s %.4f", ddpm_op_names[op], f * 1e-9);
    }
    printf("\n");
    graph_free(&g);
}

/* graph_build must refuse a config with an error and leave an empty graph. */
static void expect_refused(const char *what, const ddpm_unet_config *c)
{
    ddpm_graph g;
    memset(&g, 0x55, sizeof g);
    ddpm_result r = graph_build(c, &g);
    CHECK(r != DDPM_OK && g.nodes == NULL && g.n_nodes == 0 && g.params == NULL, "graph_build refuses %s",
          what);
    if (r == DDPM_OK)
        graph_free(&g);
    else
        printf("  refused %s: %s (%s)\n", what, ddpm_result_string(r), ddpm_last_error());
}

static void test_bad_configs(void)
{
    ddpm_unet_config base, c;
    unet_config_default(&base);
    ddpm_graph g;
    CHECK(graph_build(&base, &g) == DDPM_OK, "default config builds: %s", ddpm_last_error());
    CHECK(graph_find_param(&g, "mid_block.attentions.0.to_q.weight") >= 0, "graph_find_param finds to_q");
    CHECK(graph_find_param(&g, "mid_block.attentions.0.query.weight") < 0, "graph_find_param: unknown -> -1");
    CHECK(graph_find_param(&g, "") < 0 && graph_find_param(&g, NULL) < 0, "graph_find_param: empty / NULL");
    graph_free(&g);
    CHECK(strcmp(ddpm_op_names[OP_CONV2D], "conv2d") == 0 &&
              strcmp(ddpm_op_names[OP_CONCAT], "concat") == 0 &&
              strcmp(ddpm_op_names[OP_TIME_EMBED], "time_embed") == 0,
          "op names from the X-macro");
    CHECK(graph_build(NULL, &g) == DDPM_ERR_ARG && graph_build(&base, NULL) == DDPM_ERR_ARG,
          "NULL arguments");

#define REFUSED(desc, edit)                                                                                  \
    do {                                                                                                     \
        c = base;                                                                                            \
        edit;                                                                                                \
        expect_refused(desc, &c);                                                                            \
    } while (0)
    REFUSED("0 levels", c.levels = 0);
    REFUSED("too many levels", c.levels = DDPM_MAX_LEVELS + 1);
    REFUSED("groups not dividing the channels", c.norm_num_groups = 3);
    REFUSED("0 groups", c.norm_num_groups = 0);
    REFUSED("sample size not divisible by 8", c.sample_size = 36);
    REFUSED("sample size 0", c.sample_size = 0);
    REFUSED("head dim not dividing the channels", c.attention_head_dim = 48);
    REFUSED("negative head dim", c.attention_head_dim = -4);
    REFUSED("0 channels", c.block_out_channels[2] = 0);
    REFUSED("negative channels", c.block_out_channels[1] = -256);
    REFUSED("absurd channels", c.block_out_channels[3] = 1 << 24);
    REFUSED("odd time embedding width", (c.block_out_channels[0] = 127, c.norm_num_groups = 1));
    REFUSED("downsample_padding 2", c.downsample_padding = 2);
    REFUSED("0 layers per block", c.layers_per_block = 0);
    REFUSED("0 in_channels", c.in_channels = 0);
    REFUSED("out_channels -1", c.out_channels = -1);
    REFUSED("mid_block_scale_factor 0", c.mid_block_scale_factor = 0.0f);
    REFUSED("NaN eps", c.norm_eps = NAN);
    REFUSED("freq_shift = half the width", c.freq_shift = 64.0f);
    REFUSED("activations beyond 2^31 elements", c.sample_size = 1 << 14);
    REFUSED("sample size 2^20", c.sample_size = 1 << 20);
    REFUSED("attention over 1024x1024 positions",
            (c.levels = 1, c.block_out_channels[0] = 32, c.sample_size = 1024));
#undef REFUSED
}

int main(void)
{
    const char *tags[] = {"a", "b", "c", "d"};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(tags); i++)
        test_fixture(tags[i]);
    st_file counts;
    test_open_fixture("unet_counts.safetensors", &counts);
    test_big(&counts, "cifar10");
    test_big(&counts, "celebahq");
    st_close(&counts);
    test_bad_configs();
    return test_summary("unet");
}
