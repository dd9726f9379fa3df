/* graph.h: the U-Net as data. The op list (an X-macro), values (activations), params (weights)
 * and nodes built from a config; every backend, the FLOP counter and the trainer walk the nodes. */
#ifndef DDPM_GRAPH_H
#define DDPM_GRAPH_H

#include "config.h"

/* X(ENUM, "name"). Semantics (per batch item; shapes are (C,H,W), vectors are (C,1,1)):
 *  TIME_EMBED  out(C) = sinusoidal embedding of in0 (1,1,1): half = C/2,
 *              f_i = exp(-ln(10000) i / (half - fp0)), [sin(t f) | cos(t f)] (ip0: flip -> [cos | sin])
 *  LINEAR      out(M) = W(M,K) in0(K) + b(M)
 *  SILU        out = in0 * sigmoid(in0)
 *  CONV2D      out(Co,Ho,Wo) = conv(in0(Ci,H,W), W(Co,Ci,k,k), b(Co)); ip0 k, ip1 stride,
 *              ip2..5 pad top, left, bottom, right; Ho = (H + pt + pb - k) / stride + 1.
 *              Optional in1 (Co,1,1) is added at every pixel (the time-embedding projection);
 *              optional in2 (Co,Ho,Wo) is a residual: out = (conv + in1 + in2) * fp0 (fp0 = 1/scale).
 *  GROUPNORM   out = GN(in0; groups ip0, eps fp0) * gamma + beta, then SiLU if ip1
 *  ATTENTION   in0 = q, in1 = k, in2 = v (C,H,W); ip0 heads; per head (d = C/heads):
 *              out[:, i] = sum_j softmax_j(q[:, i] . k[:, j] / sqrt(d)) v[:, j]
 *  UPSAMPLE    nearest x2
 *  CONCAT      out = [in0 ; in1] along channels
 */
#define DDPM_OPS(X)                                                                                          \
    X(TIME_EMBED, "time_embed")                                                                              \
    X(LINEAR, "linear")                                                                                      \
    X(SILU, "silu")                                                                                          \
    X(CONV2D, "conv2d")                                                                                      \
    X(GROUPNORM, "groupnorm")                                                                                \
    X(ATTENTION, "attention")                                                                                \
    X(UPSAMPLE, "upsample")                                                                                  \
    X(CONCAT, "concat")

typedef enum ddpm_op {
#define X(id, name) OP_##id,
    DDPM_OPS(X)
#undef X
        OP_COUNT
} ddpm_op;

extern const char *const ddpm_op_names[OP_COUNT];

#define DDPM_MAX_NAME 96

typedef struct ddpm_value {
    int c, h, w; /* per batch item */
} ddpm_value;

typedef struct ddpm_param {
    char name[DDPM_MAX_NAME]; /* diffusers UNet2DModel key, e.g. "down_blocks.0.resnets.1.conv1.weight" */
    int ndim;
    int shape[4];
    int64_t numel;
} ddpm_param;

typedef struct ddpm_node {
    ddpm_op op;
    int in[3]; /* value ids, -1 when unused */
    int out;   /* value id (every node writes a fresh value) */
    int w[2];  /* param ids: weight / gamma, bias / beta; -1 when unused */
    int ip[6]; /* integer parameters, see DDPM_OPS */
    float fp[2];
    /* Training only: dropout applies to in0 before this node (ResnetBlock2D's conv2, as diffusers).
     * A flag rather than an op so that inference walks one graph with no dropout nodes in it; the
     * CPU trainer (cpu/train.c) honours it when asked for p > 0, every inference backend ignores it. */
    int train_dropout;
    char name[DDPM_MAX_NAME]; /* module path, e.g. "down_blocks.0.resnets.1.conv1" */
    int64_t flops;            /* per batch item, multiply-add = 2 */
} ddpm_node;

typedef struct ddpm_graph {
    ddpm_node *nodes;
    int n_nodes;
    ddpm_value *values;
    int n_values;
    ddpm_param *params;
    int n_params;
    int input;         /* value id of x (in_channels, S, S) */
    int timestep;      /* value id of t (1,1,1), float */
    int output;        /* value id of the model output (out_channels, S, S) */
    int64_t n_weights; /* total parameter count */
    int64_t flops;     /* total per batch item */
} ddpm_graph;

/* Builds the node list for a validated config. Free with graph_free. */
ddpm_result graph_build(const ddpm_unet_config *c, ddpm_graph *g);
void graph_free(ddpm_graph *g);
/* Index of the param with this name, or -1. */
int graph_find_param(const ddpm_graph *g, const char *name);
/* Elements of a value per batch item. */
static inline int64_t value_numel(const ddpm_value *v)
{
    return (int64_t)v->c * v->h * v->w;
}

#endif
