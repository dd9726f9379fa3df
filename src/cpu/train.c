/* train.c: the CPU training forward (every activation kept, dropout applied where the graph flags it) and
 * the backward walking the same nodes in reverse, accumulating into parameter gradients. */
#include "train.h"

#include "../rng.h"
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

struct cpu_trainer {
    const ddpm_graph *g; /* borrowed: must outlive the trainer */
    int B;
    float dropout;
    uint64_t seed;   /* dropout seed of the last forward */
    int forwarded;   /* a forward has run since creation */
    float **vals;    /* n_values buffers of B * numel: every activation of the last forward */
    float **masked;  /* n_nodes: the dropped-out in0 of flagged nodes (NULL elsewhere or when p = 0) */
    float **dvals;   /* n_values: gradients, allocated and freed during a backward */
    char *need_grad; /* n_values: a gradient reaches a parameter through this value */
};

/* Philox counter word 3 of dropout masks ("DROP"): apart from the sampler's noise streams. */
#define DROPOUT_STREAM 0x44524f50u

/* dst (+)= src * mask / (1 - p) for node `node`'s mask: element e of image b is kept when the uniform of
 * Philox block (e / 4, b, node, DROPOUT_STREAM) word e % 4 under key seed is >= p. Used for the forward
 * (accumulate 0) and, being its own adjoint, for the backward (accumulate 1). */
static void dropout_apply(float *dst, const float *src, int64_t per_image, int B, int node, uint64_t seed,
                          float p, int accumulate)
{
    float keep_scale = 1.0f / (1.0f - p);
    int64_t blocks = (per_image + 3) / 4;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
#pragma omp parallel for collapse(2) if ((int64_t)B * per_image > 65536)
    for (int b = 0; b < B; b++) {
        for (int64_t blk = 0; blk < blocks; blk++) {
            uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)b, (uint32_t)node, DROPOUT_STREAM}, r[4];
            philox4x32_10(ctr, key, r);
            for (int l = 0; l < 4 && blk * 4 + l < per_image; l++) {
                size_t e = (size_t)b * per_image + (size_t)blk * 4 + l;
                float v = rng_uniform24(r[l]) >= p ? src[e] * keep_scale : 0.0f;
                dst[e] = accumulate ? dst[e] + v : v;
            }
        }
    }
}

static int uses_dropout(const cpu_trainer *tr, const ddpm_node *n)
{
    return tr->dropout > 0.0f && n->train_dropout && n->op == OP_CONV2D;
}

void cpu_train_free(cpu_trainer *tr)
{
    if (!tr)
        return;
    if (tr->vals)
        for (int v = 0; v < tr->g->n_values; v++)
            free(tr->vals[v]);
    if (tr->dvals)
        for (int v = 0; v < tr->g->n_values; v++)
            free(tr->dvals[v]);
    if (tr->masked)
        for (int i = 0; i < tr->g->n_nodes; i++)
            free(tr->masked[i]);
    free(tr->vals);
    free(tr->dvals);
    free(tr->masked);
    free(tr->need_grad);
    free(tr);
}

ddpm_result cpu_train_create(const ddpm_graph *g, int B, float dropout, cpu_trainer **out)
{
    if (!out)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_create: NULL output");
    *out = NULL;
    if (!g || g->n_nodes < 1 || g->input < 0 || g->timestep < 0 || g->output < 0)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_create: empty graph");
    if (B < 1)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_create: batch %d must be positive", B);
    if (!(dropout >= 0.0f && dropout < 1.0f))
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_create: dropout %g is not in [0, 1)", (double)dropout);
    cpu_trainer *tr = ddpm_calloc(1, sizeof *tr);
    if (!tr)
        return DDPM_ERR_NOMEM;
    tr->g = g;
    tr->B = B;
    tr->dropout = dropout;
    tr->vals = ddpm_calloc((size_t)g->n_values, sizeof *tr->vals);
    tr->dvals = ddpm_calloc((size_t)g->n_values, sizeof *tr->dvals);
    tr->masked = ddpm_calloc((size_t)g->n_nodes, sizeof *tr->masked);
    tr->need_grad = ddpm_calloc((size_t)g->n_values, 1);
    if (!tr->vals || !tr->dvals || !tr->masked || !tr->need_grad) {
        cpu_train_free(tr);
        return DDPM_ERR_NOMEM;
    }
    int64_t bytes = 0;
    for (int v = 0; v < g->n_values; v++) {
        int64_t n = (int64_t)B * value_numel(&g->values[v]);
        tr->vals[v] = malloc((size_t)n * sizeof(float));
        bytes += n * (int64_t)sizeof(float);
        if (!tr->vals[v]) {
            cpu_train_free(tr);
            return ddpm_fail(DDPM_ERR_NOMEM,
                             "cpu_train_create: out of memory for activations (%lld MiB so far)",
                             (long long)(bytes >> 20));
        }
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        if (uses_dropout(tr, n)) {
            tr->masked[i] = malloc((size_t)B * value_numel(&g->values[n->in[0]]) * sizeof(float));
            if (!tr->masked[i]) {
                cpu_train_free(tr);
                return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for dropout at %s",
                                 n->name);
            }
        }
        /* x and t get no gradient; a value does when its node has weights or reads one that does
         * (the time embedding is a fixed function of t) */
        int need = n->op != OP_TIME_EMBED && (n->w[0] >= 0 || n->w[1] >= 0);
        for (int k = 0; k < 3; k++)
            if (n->in[k] >= 0 && tr->need_grad[n->in[k]])
                need = 1;
        tr->need_grad[n->out] = (char)need;
    }
    *out = tr;
    return DDPM_OK;
}

ddpm_result cpu_train_forward(cpu_trainer *tr, const float *const *weights, const float *x, const float *t,
                              uint64_t dropout_seed, const float **out)
{
    if (!tr || !weights || !x || !t || !out)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_forward: NULL argument");
    const ddpm_graph *g = tr->g;
    int B = tr->B;
    memcpy(tr->vals[g->input], x, (size_t)B * value_numel(&g->values[g->input]) * sizeof(float));
    memcpy(tr->vals[g->timestep], t, (size_t)B * sizeof(float));
    tr->seed = dropout_seed;
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        if (n->op == OP_ATTENTION) { /* GEMMs: faster than the inference kernel at training batch sizes */
            const ddpm_value *a = &g->values[n->in[0]];
            attention_forward_gemm(tr->vals[n->out], tr->vals[n->in[0]], tr->vals[n->in[1]],
                                   tr->vals[n->in[2]], B, a->c, a->h * a->w, n->ip[0]);
            continue;
        }
        if (n->op != OP_CONV2D) {
            cpu_node_forward(g, n, tr->vals, weights, B);
            continue;
        }
        const ddpm_value *a = &g->values[n->in[0]], *o = &g->values[n->out];
        const float *cin = tr->vals[n->in[0]];
        if (uses_dropout(tr, n)) {
            dropout_apply(tr->masked[i], cin, value_numel(a), B, i, tr->seed, tr->dropout, 0);
            cin = tr->masked[i];
        }
        conv2d_forward_gemm(tr->vals[n->out], cin, weights[n->w[0]], weights[n->w[1]],
                            n->in[1] >= 0 ? tr->vals[n->in[1]] : NULL,
                            n->in[2] >= 0 ? tr->vals[n->in[2]] : NULL, n->fp[0], B, a->c, a->h, a->w, o->c,
                            n->ip[0], n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5]);
    }
    tr->forwarded = 1;
    *out = tr->vals[g->output];
    return DDPM_OK;
}

/* The gradient buffer of value v, zeroed on first use; NULL when v needs none. */
static float *grad_of(cpu_trainer *tr, int v, ddpm_result *res)
{
    if (v < 0 || !tr->need_grad[v])
        return NULL;
    if (!tr->dvals[v]) {
        tr->dvals[v] = calloc((size_t)tr->B * value_numel(&tr->g->values[v]), sizeof(float));
        if (!tr->dvals[v])
            *res = ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_backward: out of memory for a gradient");
    }
    return tr->dvals[v];
}

ddpm_result cpu_train_backward(cpu_trainer *tr, const float *const *weights, const float *dout,
                               float *const *grads)
{
    if (!tr || !weights || !dout || !grads)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_backward: NULL argument");
    if (!tr->forwarded)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_backward: no forward to differentiate");
    const ddpm_graph *g = tr->g;
    int B = tr->B;
    ddpm_result res = DDPM_OK;
    float *dmasked = NULL;
    float *d = grad_of(tr, g->output, &res);
    if (!d)
        goto cleanup;
    memcpy(d, dout, (size_t)B * value_numel(&g->values[g->output]) * sizeof(float));

    for (int i = g->n_nodes - 1; i >= 0; i--) {
        const ddpm_node *n = &g->nodes[i];
        const float *go = tr->dvals[n->out];
        if (!go) /* nothing downstream reached a loss through this node */
            continue;
        const ddpm_value *a = &g->values[n->in[0]], *o = &g->values[n->out];
        const float *x = tr->vals[n->in[0]];
        const float *w = n->w[0] >= 0 ? weights[n->w[0]] : NULL;
        const float *bias = n->w[1] >= 0 ? weights[n->w[1]] : NULL;
        float *dw = n->w[0] >= 0 ? grads[n->w[0]] : NULL;
        float *db = n->w[1] >= 0 ? grads[n->w[1]] : NULL;
        float *dx = grad_of(tr, n->in[0], &res);
        float *d1 = grad_of(tr, n->in[1], &res);
        float *d2 = grad_of(tr, n->in[2], &res);
        if (res != DDPM_OK)
            goto cleanup;
        switch (n->op) {
        case OP_TIME_EMBED: break; /* no gradient w.r.t. t */
        case OP_LINEAR: linear_backward(dx, dw, db, go, x, w, B, a->c, o->c); break;
        case OP_SILU: silu_backward(dx, go, x, (int64_t)B * value_numel(o)); break;
        case OP_CONV2D: {
            float *dconv_in = dx;
            if (uses_dropout(tr, n) && dx) { /* the conv saw the masked input: its gradient is masked */
                x = tr->masked[i];
                dmasked = calloc((size_t)B * value_numel(a), sizeof(float));
                if (!dmasked) {
                    res = ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_backward: out of memory at %s", n->name);
                    goto cleanup;
                }
                dconv_in = dmasked;
            } else if (uses_dropout(tr, n)) {
                x = tr->masked[i];
            }
            conv2d_backward(dconv_in, dw, db, d1, d2, go, x, w, n->fp[0], B, a->c, a->h, a->w, o->c, n->ip[0],
                            n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5]);
            if (dmasked) {
                dropout_apply(dx, dmasked, value_numel(a), B, i, tr->seed, tr->dropout, 1);
                free(dmasked);
                dmasked = NULL;
            }
            break;
        }
        case OP_GROUPNORM:
            groupnorm_backward(dx, dw, db, go, x, w, bias, B, a->c, a->h * a->w, n->ip[0], n->fp[0],
                               n->ip[1]);
            break;
        case OP_ATTENTION:
            attention_backward(dx, d1, d2, go, x, tr->vals[n->in[1]], tr->vals[n->in[2]], B, a->c,
                               a->h * a->w, n->ip[0]);
            break;
        case OP_UPSAMPLE: upsample_backward(dx, go, B, a->c, a->h, a->w); break;
        case OP_CONCAT: concat_backward(dx, d1, go, B, a->c, g->values[n->in[1]].c, a->h * a->w); break;
        case OP_COUNT: break;
        }
        /* every reader of this node's output came later in the list: its gradient is spent */
        free(tr->dvals[n->out]);
        tr->dvals[n->out] = NULL;
    }

cleanup:
    free(dmasked);
    for (int v = 0; v < g->n_values; v++) {
        free(tr->dvals[v]);
        tr->dvals[v] = NULL;
    }
    return res;
}
