/* graph.c: builds the node list of a diffusers UNet2DModel (DDPM family) from its config, with
 * diffusers' module paths as node names and its state_dict keys and shapes as params. */
#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ddpm_op_names[OP_COUNT] = {
#define X(id, name) name,
    DDPM_OPS(X)
#undef X
};

/* Limits that keep every per-item size in int and every count in int64 (hostile configs). */
#define MAX_CHANNELS 65536
#define MAX_SIZE 65536
#define MAX_LAYERS 64
#define MAX_VALUE_NUMEL ((int64_t)1 << 31)
#define MAX_ATTENTION_POSITIONS ((int64_t)1 << 18) /* 512 x 512: keeps attention FLOPs in int64 */

/* FLOP conventions (per batch item): a multiply-add is 2; an add, multiply or divide is 1; exp, sin,
 * cos and sqrt count 1 each. GroupNorm: 8 per element (mean 1, variance 3, normalize + affine 4),
 * +4 when SiLU is fused (SiLU = negate, exp, add, divide: 4 per element). Softmax: 5 per score
 * (max, subtract, exp, sum, divide) + 1 for the 1/sqrt(d) scale. Upsample and concat move data: 0. */
#define FLOPS_GN 8
#define FLOPS_SILU 4
#define FLOPS_SOFTMAX 6
#define FLOPS_TIME_EMBED 3 /* per output element: t * f, sin or cos, exp of the frequency */

typedef struct builder {
    ddpm_graph *g;
    int cap_nodes, cap_values, cap_params;
    const ddpm_unet_config *c;
    int temb_act; /* value id of SiLU(temb), read by every resnet's time_emb_proj */
    /* the down path's skip stack (value ids), popped last in first out by the up path */
    int *skips;
    int n_skips, cap_skips;
    ddpm_result err; /* the code of the first failure */
} builder;

/* Records a failure (message for ddpm_last_error, code for graph_build) and returns -1. */
static int bfail(builder *b, ddpm_result code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int bfail(builder *b, ddpm_result code, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (b->err == DDPM_OK) {
        b->err = code;
        ddpm_fail(code, "graph_build: %s", msg);
    }
    return -1;
}

static int grow(builder *b, void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return 1;
    int ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *np = realloc(*p, (size_t)ncap * elem);
    if (!np) {
        bfail(b, DDPM_ERR_NOMEM, "out of memory");
        return 0;
    }
    *p = np;
    *cap = ncap;
    return 1;
}

/* A new value of shape (c, h, w) per item; -1 on failure. */
static int new_value(builder *b, int c, int h, int w)
{
    ddpm_graph *g = b->g;
    if (c <= 0 || h <= 0 || w <= 0 || (int64_t)c * h * w > MAX_VALUE_NUMEL) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "activation of %d x %d x %d is out of range", c, h, w);
        return -1;
    }
    if (!grow(b, (void **)&g->values, &b->cap_values, g->n_values + 1, sizeof(ddpm_value)))
        return -1;
    g->values[g->n_values] = (ddpm_value){c, h, w};
    return g->n_values++;
}

/* A new param "<module>.<suffix>" with the given torch shape; -1 on failure. */
static int new_param(builder *b, const char *module, const char *suffix, int ndim, const int *shape)
{
    ddpm_graph *g = b->g;
    if (!grow(b, (void **)&g->params, &b->cap_params, g->n_params + 1, sizeof(ddpm_param)))
        return -1;
    ddpm_param *p = &g->params[g->n_params];
    memset(p, 0, sizeof *p);
    int len = snprintf(p->name, sizeof p->name, "%s.%s", module, suffix);
    if (len < 0 || len >= (int)sizeof p->name) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "param name %s.%s too long", module, suffix);
        return -1;
    }
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= shape[i]; /* each dim <= MAX_CHANNELS, ndim <= 4: fits int64 */
    }
    g->n_weights += p->numel;
    return g->n_params++;
}

/* Appends a node writing a fresh value (c, h, w); returns the node (NULL on failure). The caller
 * fills w[], ip[], fp[] and flops. */
static ddpm_node *new_node(builder *b, ddpm_op op, const char *name, int in0, int in1, int in2, int c, int h,
                           int w)
{
    ddpm_graph *g = b->g;
    int out = new_value(b, c, h, w);
    if (out < 0)
        return NULL;
    if (!grow(b, (void **)&g->nodes, &b->cap_nodes, g->n_nodes + 1, sizeof(ddpm_node)))
        return NULL;
    ddpm_node *n = &g->nodes[g->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->in[0] = in0;
    n->in[1] = in1;
    n->in[2] = in2;
    n->out = out;
    n->w[0] = n->w[1] = -1;
    n->fp[0] = 1.0f;
    int len = snprintf(n->name, sizeof n->name, "%s", name);
    if (len < 0 || len >= (int)sizeof n->name) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "node name %s too long", name);
        g->n_nodes--;
        return NULL;
    }
    return n;
}

static int push_skip(builder *b, int v)
{
    if (!grow(b, (void **)&b->skips, &b->cap_skips, b->n_skips + 1, sizeof(int)))
        return 0;
    b->skips[b->n_skips++] = v;
    return 1;
}

static const ddpm_value *val(builder *b, int id)
{
    return &b->g->values[id];
}

/* ---- layers: each returns the id of the value it writes, -1 on failure ---------------------------- */

/* nn.Conv2d(ci, co, k, stride, padding) (bias) on x; temb (co,1,1) and res (co,Ho,Wo) optional (-1). */
static int conv(builder *b, const char *name, int x, int co, int k, int stride, int pt, int pl, int pb,
                int pr, int temb, int res, float scale)
{
    const ddpm_value *in = val(b, x);
    int ci = in->c, h = in->h, w = in->w;
    int hp = h + pt + pb - k, wp = w + pl + pr - k;
    if (hp < 0 || wp < 0) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "%s: %dx%d input is smaller than its kernel", name, h, w);
        return -1;
    }
    int ho = hp / stride + 1, wo = wp / stride + 1;
    ddpm_node *n = new_node(b, OP_CONV2D, name, x, temb, res, co, ho, wo);
    if (!n)
        return -1;
    int wshape[4] = {co, ci, k, k};
    n->w[0] = new_param(b, name, "weight", 4, wshape);
    n->w[1] = n->w[0] < 0 ? -1 : new_param(b, name, "bias", 1, &co);
    if (n->w[1] < 0)
        return -1;
    n->ip[0] = k;
    n->ip[1] = stride;
    n->ip[2] = pt;
    n->ip[3] = pl;
    n->ip[4] = pb;
    n->ip[5] = pr;
    n->fp[0] = scale;
    int64_t outs = (int64_t)co * ho * wo;
    int extra = 1 + (temb >= 0) + (res >= 0) + (scale != 1.0f); /* bias, temb, residual, scale */
    n->flops = 2 * outs * ci * k * k + extra * outs;
    return n->out;
}

/* A 1x1 projection over channels with a 2-D (co, ci) weight, as torch stores nn.Linear (to_q, ...). */
static int proj1x1(builder *b, const char *name, int x, int res, float scale)
{
    int out = conv(b, name, x, val(b, x)->c, 1, 1, 0, 0, 0, 0, -1, res, scale);
    if (out < 0)
        return -1;
    ddpm_param *p = &b->g->params[b->g->nodes[b->g->n_nodes - 1].w[0]];
    p->ndim = 2; /* numel unchanged: (co, ci, 1, 1) -> (co, ci) */
    p->shape[2] = p->shape[3] = 0;
    return out;
}

static int groupnorm(builder *b, const char *name, int x, int silu)
{
    const ddpm_value in = *val(b, x); /* a copy: new_node may move the value array */
    int c = in.c;
    if (c % b->c->norm_num_groups != 0) {
        bfail(b, DDPM_ERR_MODEL, "%s: norm_num_groups %d does not divide %d channels", name,
              b->c->norm_num_groups, c);
        return -1;
    }
    ddpm_node *n = new_node(b, OP_GROUPNORM, name, x, -1, -1, c, in.h, in.w);
    if (!n)
        return -1;
    n->w[0] = new_param(b, name, "weight", 1, &c);
    n->w[1] = n->w[0] < 0 ? -1 : new_param(b, name, "bias", 1, &c);
    if (n->w[1] < 0)
        return -1;
    n->ip[0] = b->c->norm_num_groups;
    n->ip[1] = silu;
    n->fp[0] = b->c->norm_eps;
    n->flops = (int64_t)(FLOPS_GN + (silu ? FLOPS_SILU : 0)) * value_numel(&in);
    return n->out;
}

static int linear(builder *b, const char *name, int x, int m)
{
    int k = val(b, x)->c;
    ddpm_node *n = new_node(b, OP_LINEAR, name, x, -1, -1, m, 1, 1);
    if (!n)
        return -1;
    int wshape[2] = {m, k};
    n->w[0] = new_param(b, name, "weight", 2, wshape);
    n->w[1] = n->w[0] < 0 ? -1 : new_param(b, name, "bias", 1, &m);
    if (n->w[1] < 0)
        return -1;
    n->flops = 2 * (int64_t)m * k + m;
    return n->out;
}

static int silu(builder *b, const char *name, int x)
{
    const ddpm_value in = *val(b, x);
    ddpm_node *n = new_node(b, OP_SILU, name, x, -1, -1, in.c, in.h, in.w);
    if (!n)
        return -1;
    n->flops = FLOPS_SILU * value_numel(&in);
    return n->out;
}

/* diffusers ResnetBlock2D(in, co, temb_channels, eps, groups, output_scale_factor) at `prefix`. */
static int resnet(builder *b, const char *prefix, int x, int co, float output_scale_factor)
{
    char name[DDPM_MAX_NAME];
    const ddpm_value in = *val(b, x);
    if (in.c % b->c->norm_num_groups != 0 || co % b->c->norm_num_groups != 0) {
        bfail(b, DDPM_ERR_MODEL, "%s: norm_num_groups %d does not divide %d or %d channels", prefix,
              b->c->norm_num_groups, in.c, co);
        return -1;
    }
#define NAME(suffix) (snprintf(name, sizeof name, "%s.%s", prefix, suffix), name)
    int h = groupnorm(b, NAME("norm1"), x, 1);
    int temb = h < 0 ? -1 : linear(b, NAME("time_emb_proj"), b->temb_act, co);
    h = temb < 0 ? -1 : conv(b, NAME("conv1"), h, co, 3, 1, 1, 1, 1, 1, temb, -1, 1.0f);
    h = h < 0 ? -1 : groupnorm(b, NAME("norm2"), h, 1);
    if (h < 0)
        return -1;
    int res = x;
    if (in.c != co) {
        res = conv(b, NAME("conv_shortcut"), x, co, 1, 1, 0, 0, 0, 0, -1, -1, 1.0f);
        if (res < 0)
            return -1;
    }
    int out = conv(b, NAME("conv2"), h, co, 3, 1, 1, 1, 1, 1, -1, res, 1.0f / output_scale_factor);
    if (out >= 0)
        b->g->nodes[b->g->n_nodes - 1].train_dropout = 1; /* dropout(SiLU(norm2(h))) in training */
    return out;
#undef NAME
}

/* diffusers Attention(C, heads, dim_head, residual_connection, rescale_output_factor, group_norm) as
 * AttnDownBlock2D / AttnUpBlock2D / UNetMidBlock2D use it. */
static int attention(builder *b, const char *prefix, int x, float rescale_output_factor)
{
    char name[DDPM_MAX_NAME];
    const ddpm_value in = *val(b, x);
    int heads = 1;
    if (b->c->attention_head_dim > 0) {
        if (in.c % b->c->attention_head_dim != 0) {
            bfail(b, DDPM_ERR_MODEL, "%s: attention_head_dim %d does not divide %d channels", prefix,
                  b->c->attention_head_dim, in.c);
            return -1;
        }
        heads = in.c / b->c->attention_head_dim;
    }
#define NAME(suffix) (snprintf(name, sizeof name, "%s.%s", prefix, suffix), name)
    int h = groupnorm(b, NAME("group_norm"), x, 0);
    int q = h < 0 ? -1 : proj1x1(b, NAME("to_q"), h, -1, 1.0f);
    int k = q < 0 ? -1 : proj1x1(b, NAME("to_k"), h, -1, 1.0f);
    int v = k < 0 ? -1 : proj1x1(b, NAME("to_v"), h, -1, 1.0f);
    if (v < 0)
        return -1;
    if ((int64_t)in.h * in.w > MAX_ATTENTION_POSITIONS) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "%s: attention over %dx%d positions is too large", prefix, in.h, in.w);
        return -1;
    }
    /* the attention core has no module of its own: it is named after the Attention module */
    ddpm_node *n = new_node(b, OP_ATTENTION, prefix, q, k, v, in.c, in.h, in.w);
    if (!n)
        return -1;
    n->ip[0] = heads;
    int64_t hw = (int64_t)in.h * in.w;
    n->flops = 2 * (2 * hw * hw * in.c) + FLOPS_SOFTMAX * heads * hw * hw; /* q k^T, softmax, p v */
    return proj1x1(b, NAME("to_out.0"), n->out, x, 1.0f / rescale_output_factor);
#undef NAME
}

static int upsample(builder *b, const char *name, int x)
{
    const ddpm_value *in = val(b, x);
    if (in->h > MAX_SIZE || in->w > MAX_SIZE) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "%s: image too large", name);
        return -1;
    }
    ddpm_node *n = new_node(b, OP_UPSAMPLE, name, x, -1, -1, in->c, 2 * in->h, 2 * in->w);
    return n ? n->out : -1;
}

static int concat(builder *b, const char *name, int x, int skip)
{
    const ddpm_value *a = val(b, x), *s = val(b, skip);
    if (a->h != s->h || a->w != s->w) {
        bfail(b, DDPM_ERR_MODEL, "%s: %dx%d hidden state cannot be joined with a %dx%d skip", name, a->h,
              a->w, s->h, s->w);
        return -1;
    }
    if (a->c + s->c > MAX_CHANNELS) {
        bfail(b, DDPM_ERR_UNSUPPORTED, "%s: too many channels", name);
        return -1;
    }
    ddpm_node *n = new_node(b, OP_CONCAT, name, x, skip, -1, a->c + s->c, a->h, a->w);
    return n ? n->out : -1;
}

/* ---- the model ---------------------------------------------------------------------------------- */

static ddpm_result check_config(const ddpm_unet_config *c)
{
    if (c->levels < 1 || c->levels > DDPM_MAX_LEVELS)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: %d levels (block_out_channels) is not in 1..%d",
                         c->levels, DDPM_MAX_LEVELS);
    if (c->in_channels < 1 || c->in_channels > MAX_CHANNELS || c->out_channels < 1 ||
        c->out_channels > MAX_CHANNELS)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: in_channels %d / out_channels %d out of range",
                         c->in_channels, c->out_channels);
    if (c->sample_size < 1 || c->sample_size > MAX_SIZE)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: sample_size %d out of range", c->sample_size);
    if (c->layers_per_block < 1 || c->layers_per_block > MAX_LAYERS)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: layers_per_block %d is not in 1..%d",
                         c->layers_per_block, MAX_LAYERS);
    if (c->norm_num_groups < 1)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: norm_num_groups %d must be positive",
                         c->norm_num_groups);
    if (!(c->norm_eps >= 0.0f) || !isfinite(c->norm_eps))
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: norm_eps %g must be finite and >= 0",
                         (double)c->norm_eps);
    if (c->attention_head_dim < 0)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: attention_head_dim %d is negative",
                         c->attention_head_dim);
    if (c->downsample_padding != 0 && c->downsample_padding != 1)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "graph_build: downsample_padding %d (only 0 and 1)",
                         c->downsample_padding);
    if (!isfinite(c->mid_block_scale_factor) || c->mid_block_scale_factor == 0.0f)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: mid_block_scale_factor %g must be finite and non-zero",
                         (double)c->mid_block_scale_factor);
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > MAX_CHANNELS)
            return ddpm_fail(DDPM_ERR_MODEL, "graph_build: block_out_channels[%d] = %d out of range", i,
                             c->block_out_channels[i]);
    int c0 = c->block_out_channels[0];
    if (c0 % 2 != 0)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                         "graph_build: block_out_channels[0] = %d must be even (time embedding)", c0);
    if (!isfinite(c->freq_shift) || (float)(c0 / 2) - c->freq_shift == 0.0f)
        return ddpm_fail(DDPM_ERR_MODEL, "graph_build: freq_shift %g makes the time embedding divide by zero",
                         (double)c->freq_shift);
    /* UNet2DModel passes no upsample size: every downsampling must halve exactly */
    int s = c->sample_size;
    for (int i = 0; i + 1 < c->levels; i++) {
        if (s % 2 != 0)
            return ddpm_fail(DDPM_ERR_MODEL, "graph_build: sample_size %d is not divisible by 2^%d",
                             c->sample_size, c->levels - 1);
        s /= 2;
    }
    return DDPM_OK;
}

/* A down block (DownBlock2D / AttnDownBlock2D) at level i. */
static int down_block(builder *b, int i, int x)
{
    const ddpm_unet_config *c = b->c;
    char name[DDPM_MAX_NAME];
    int co = c->block_out_channels[i];
    for (int j = 0; j < c->layers_per_block && x >= 0; j++) {
        snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", i, j);
        x = resnet(b, name, x, co, 1.0f);
        if (x >= 0 && c->down_attn[i]) {
            snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", i, j);
            x = attention(b, name, x, 1.0f);
        }
        if (x >= 0 && !push_skip(b, x))
            return -1;
    }
    if (x >= 0 && i + 1 < c->levels) { /* Downsample2D(use_conv, padding = downsample_padding) */
        snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
        int p = c->downsample_padding;
        x = p == 0 ? conv(b, name, x, co, 3, 2, 0, 0, 1, 1, -1, -1, 1.0f)
                   : conv(b, name, x, co, 3, 2, 1, 1, 1, 1, -1, -1, 1.0f);
        if (x >= 0 && !push_skip(b, x))
            return -1;
    }
    return x;
}

/* An up block (UpBlock2D / AttnUpBlock2D) with index i (0 = lowest resolution), channels as diffusers
 * computes them. */
static int up_block(builder *b, int i, int x)
{
    const ddpm_unet_config *c = b->c;
    char name[DDPM_MAX_NAME];
    int n = c->levels;
    int out_ch = c->block_out_channels[n - 1 - i];
    int prev_out = c->block_out_channels[i == 0 ? n - 1 : n - i];
    int in_ch = c->block_out_channels[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
    int layers = c->layers_per_block + 1;
    for (int j = 0; j < layers && x >= 0; j++) {
        int res_skip = j == layers - 1 ? in_ch : out_ch;
        int res_in = j == 0 ? prev_out : out_ch;
        if (b->n_skips == 0) {
            bfail(b, DDPM_ERR_MODEL, "up_blocks.%d: the skip stack is empty", i);
            return -1;
        }
        int skip = b->skips[--b->n_skips];
        if (val(b, x)->c != res_in || val(b, skip)->c != res_skip) { /* cannot happen for UNet2DModel */
            bfail(b, DDPM_ERR_MODEL, "up_blocks.%d.resnets.%d: channels %d + %d, expected %d + %d", i, j,
                  val(b, x)->c, val(b, skip)->c, res_in, res_skip);
            return -1;
        }
        snprintf(name, sizeof name, "up_blocks.%d.resnets.%d.cat", i, j);
        x = concat(b, name, x, skip);
        snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
        x = x < 0 ? -1 : resnet(b, name, x, out_ch, 1.0f);
        if (x >= 0 && c->up_attn[i]) {
            snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
            x = attention(b, name, x, 1.0f);
        }
    }
    if (x >= 0 && i + 1 < n) { /* Upsample2D(use_conv): nearest x2, conv 3x3 */
        snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0", i);
        x = upsample(b, name, x);
        snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
        x = x < 0 ? -1 : conv(b, name, x, out_ch, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    }
    return x;
}

static void build(builder *b)
{
    const ddpm_unet_config *c = b->c;
    ddpm_graph *g = b->g;
    int c0 = c->block_out_channels[0];
    int s = c->sample_size;
    g->input = new_value(b, c->in_channels, s, s);
    g->timestep = new_value(b, 1, 1, 1);
    if (g->input < 0 || g->timestep < 0)
        return;

    /* Timesteps(c0, flip_sin_to_cos, freq_shift) + TimestepEmbedding(c0, 4 c0) */
    ddpm_node *te = new_node(b, OP_TIME_EMBED, "time_proj", g->timestep, -1, -1, c0, 1, 1);
    if (!te)
        return;
    te->ip[0] = c->flip_sin_to_cos != 0;
    te->fp[0] = c->freq_shift;
    te->flops = (int64_t)FLOPS_TIME_EMBED * c0;
    int temb = linear(b, "time_embedding.linear_1", te->out, 4 * c0);
    temb = temb < 0 ? -1 : silu(b, "time_embedding.act", temb);
    temb = temb < 0 ? -1 : linear(b, "time_embedding.linear_2", temb, 4 * c0);
    /* every ResnetBlock2D applies SiLU to temb before its time_emb_proj: computed once here */
    b->temb_act = temb < 0 ? -1 : silu(b, "time_embedding.silu_out", temb);
    if (b->temb_act < 0)
        return;

    int x = conv(b, "conv_in", g->input, c0, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    if (x < 0 || !push_skip(b, x))
        return;
    for (int i = 0; i < c->levels && x >= 0; i++)
        x = down_block(b, i, x);

    /* UNetMidBlock2D: resnets.0, attentions.0 (add_attention), resnets.1 */
    float msf = c->mid_block_scale_factor;
    int cm = c->block_out_channels[c->levels - 1];
    x = x < 0 ? -1 : resnet(b, "mid_block.resnets.0", x, cm, msf);
    if (x >= 0 && c->mid_attn)
        x = attention(b, "mid_block.attentions.0", x, msf);
    x = x < 0 ? -1 : resnet(b, "mid_block.resnets.1", x, cm, msf);

    for (int i = 0; i < c->levels && x >= 0; i++)
        x = up_block(b, i, x);
    if (x >= 0 && b->n_skips != 0) {
        bfail(b, DDPM_ERR_MODEL, "%d skip connections left unused", b->n_skips);
        return;
    }
    x = x < 0 ? -1 : groupnorm(b, "conv_norm_out", x, 1);
    x = x < 0 ? -1 : conv(b, "conv_out", x, c->out_channels, 3, 1, 1, 1, 1, 1, -1, -1, 1.0f);
    if (x < 0)
        return;
    g->output = x;
    for (int i = 0; i < g->n_nodes; i++) { /* each node's count is < 2^56: the sum is checked */
        if (g->flops > INT64_MAX - g->nodes[i].flops) {
            bfail(b, DDPM_ERR_UNSUPPORTED, "the model's FLOP count overflows");
            return;
        }
        g->flops += g->nodes[i].flops;
    }
}

ddpm_result graph_build(const ddpm_unet_config *c, ddpm_graph *g)
{
    if (!c || !g)
        return ddpm_fail(DDPM_ERR_ARG, "graph_build: NULL argument");
    memset(g, 0, sizeof *g);
    g->input = g->timestep = g->output = -1;
    ddpm_result res = check_config(c);
    if (res != DDPM_OK)
        return res;
    builder b = {.g = g, .c = c, .temb_act = -1};
    build(&b);
    free(b.skips);
    if (b.err != DDPM_OK)
        graph_free(g);
    return b.err;
}

void graph_free(ddpm_graph *g)
{
    if (!g)
        return;
    free(g->nodes);
    free(g->values);
    free(g->params);
    memset(g, 0, sizeof *g);
    g->input = g->timestep = g->output = -1;
}

int graph_find_param(const ddpm_graph *g, const char *name)
{
    if (!g || !name)
        return -1;
    for (int i = 0; i < g->n_params; i++)
        if (strcmp(g->params[i].name, name) == 0)
            return i;
    return -1;
}
