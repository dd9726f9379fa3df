/* train.c: the CPU training forward (every activation kept, dropout applied where the graph flags it) and
 * the backward walking the same nodes in reverse, accumulating into parameter gradients. */
#include "train.h"

#include "../rng.h"
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

/* The batch is split into shards, one per OpenMP thread (at most one image each): every thread runs the
 * whole graph on its images with single-threaded ops, and the shards' weight gradients are summed at the
 * end. Two synchronisations per step instead of one or more per op: on 2 cores this beats threading each
 * op, and it does not collapse when the machine is busy (a thread waiting at a barrier for a descheduled
 * one). With one shard (one thread, or batch 1) each op threads itself instead. The sum over shards makes
 * the gradients' rounding depend on the thread count, never on timing. */
typedef struct train_shard {
    int B, first;   /* images first .. first + B - 1 of the batch */
    float **vals;   /* n_values buffers of B * numel: every activation of the last forward */
    float **masked; /* n_nodes: the dropped-out in0 of flagged nodes (NULL elsewhere or when p = 0) */
    float **probs;  /* n_nodes: attention nodes' softmax kept for the backward (NULL: recomputed there) */
    float **dbuf;   /* n_dbufs gradient buffers of B * dbuf_numel[i] floats, kept for the trainer's life */
    float **dvals;  /* n_values: a value's gradient buffer while it is live in a backward, else NULL */
    float *dmasked; /* B * dmasked_numel: a dropout conv's gradient before the mask (NULL without dropout) */
    float **grads;  /* n_params gradient buffers of shards > 0 (shard 0 writes the caller's) */
} train_shard;

struct cpu_trainer {
    const ddpm_graph *g; /* borrowed: must outlive the trainer */
    int B;
    float dropout;
    uint64_t seed;       /* dropout seed of the last forward */
    int forwarded;       /* a forward has run since creation */
    char *need_grad;     /* n_values: a gradient reaches a parameter through this value */
    int *dbuf_of;        /* n_values: the gradient buffer value v uses in every backward (-1: none) */
    int64_t *dbuf_numel; /* n_dbufs: floats per image of each gradient buffer */
    int n_dbufs;
    int64_t dmasked_numel; /* floats per image of the dropout scratch (0: none) */
    int n_shards;
    train_shard *sh;
    float *out; /* (B, Cout, S, S): the shards' outputs side by side (NULL with one shard) */
};

/* Philox counter word 3 of dropout masks ("DROP"): apart from the sampler's noise streams. */
#define DROPOUT_STREAM 0x44524f50u

/* dst (+)= src * mask / (1 - p) for node `node`'s mask: element e of batch image b (= first + local index)
 * is kept when the uniform of Philox block (e / 4, b, node, DROPOUT_STREAM) word e % 4 under key seed is
 * >= p. Used for the forward (accumulate 0) and, being its own adjoint, for the backward (accumulate 1). */
static void dropout_apply(float *dst, const float *src, int64_t per_image, int B, int first, int node,
                          uint64_t seed, float p, int accumulate)
{
    float keep_scale = 1.0f / (1.0f - p);
    int64_t blocks = (per_image + 3) / 4;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
#pragma omp parallel for collapse(2) if ((int64_t)B * per_image > 65536)
    for (int b = 0; b < B; b++) {
        for (int64_t blk = 0; blk < blocks; blk++) {
            uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)(first + b), (uint32_t)node, DROPOUT_STREAM}, r[4];
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

/* Floats per image of an attention node's softmax (heads x HW x HW) kept from the forward for the backward,
 * or 0 (recomputed there) when they would take more memory than four of the node's activations. */
static int64_t kept_probs(const ddpm_graph *g, const ddpm_node *n)
{
    if (n->op != OP_ATTENTION)
        return 0;
    const ddpm_value *a = &g->values[n->in[0]];
    int64_t hw = (int64_t)a->h * a->w, per = (int64_t)n->ip[0] * hw * hw;
    return per <= 4 * value_numel(a) ? per : 0;
}

static void shard_free(const cpu_trainer *tr, train_shard *s)
{
    const ddpm_graph *g = tr->g;
    if (s->dbuf)
        for (int i = 0; i < tr->n_dbufs; i++)
            free(s->dbuf[i]);
    if (s->vals)
        for (int v = 0; v < g->n_values; v++)
            free(s->vals[v]);
    if (s->masked)
        for (int i = 0; i < g->n_nodes; i++)
            free(s->masked[i]);
    if (s->probs)
        for (int i = 0; i < g->n_nodes; i++)
            free(s->probs[i]);
    if (s->grads)
        for (int p = 0; p < g->n_params; p++)
            free(s->grads[p]);
    free(s->vals);
    free(s->dvals);
    free(s->dbuf);
    free(s->dmasked);
    free(s->masked);
    free(s->probs);
    free(s->grads);
}

void cpu_train_free(cpu_trainer *tr)
{
    if (!tr)
        return;
    if (tr->sh) {
        for (int s = 0; s < tr->n_shards; s++)
            shard_free(tr, &tr->sh[s]);
    }
    /* the ops' scratch of the threads that ran the shards (OpenMP keeps its threads from region to region;
     * a thread not met here frees its scratch when it exits) */
#pragma omp parallel num_threads(tr->n_shards > 1 ? tr->n_shards : 1) if (tr->n_shards > 1)
    cpu_scratch_release();
    free(tr->sh);
    free(tr->need_grad);
    free(tr->dbuf_of);
    free(tr->dbuf_numel);
    free(tr->out);
    free(tr);
}

static ddpm_result shard_alloc(const cpu_trainer *tr, train_shard *s, int index)
{
    const ddpm_graph *g = tr->g;
    s->vals = ddpm_calloc((size_t)g->n_values, sizeof *s->vals);
    s->dvals = ddpm_calloc((size_t)g->n_values, sizeof *s->dvals);
    s->masked = ddpm_calloc((size_t)g->n_nodes, sizeof *s->masked);
    s->probs = ddpm_calloc((size_t)g->n_nodes, sizeof *s->probs);
    s->dbuf = ddpm_calloc((size_t)tr->n_dbufs + 1, sizeof *s->dbuf);
    if (index > 0)
        s->grads = ddpm_calloc((size_t)g->n_params, sizeof *s->grads);
    if (!s->vals || !s->dvals || !s->masked || !s->probs || !s->dbuf || (index > 0 && !s->grads))
        return DDPM_ERR_NOMEM;
    for (int i = 0; i < tr->n_dbufs; i++) {
        s->dbuf[i] = malloc((size_t)s->B * tr->dbuf_numel[i] * sizeof(float));
        if (!s->dbuf[i])
            return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for gradients");
    }
    if (tr->dmasked_numel > 0) {
        s->dmasked = malloc((size_t)s->B * tr->dmasked_numel * sizeof(float));
        if (!s->dmasked)
            return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for dropout");
    }
    for (int v = 0; v < g->n_values; v++) {
        s->vals[v] = malloc((size_t)s->B * value_numel(&g->values[v]) * sizeof(float));
        if (!s->vals[v])
            return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for activations");
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        if (uses_dropout(tr, n)) {
            s->masked[i] = malloc((size_t)s->B * value_numel(&g->values[n->in[0]]) * sizeof(float));
            if (!s->masked[i])
                return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for dropout at %s",
                                 n->name);
        }
        if (kept_probs(g, n) > 0) {
            s->probs[i] = malloc((size_t)s->B * kept_probs(g, n) * sizeof(float));
            if (!s->probs[i])
                return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for attention at %s",
                                 n->name);
        }
    }
    for (int p = 0; index > 0 && p < g->n_params; p++) {
        s->grads[p] = malloc((size_t)g->params[p].numel * sizeof(float));
        if (!s->grads[p])
            return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory for gradients");
    }
    return DDPM_OK;
}

/* Marks the values a gradient reaches a parameter through, then places every such value's gradient in a
 * buffer by walking the backward once: a gradient is live from the backward of its last reader (the first
 * to write it) to that of its producer, and a buffer freed there is taken by a later gradient (the smallest
 * free one that fits, else the largest free one, grown). The peak is about that of allocating each gradient
 * when first written and freeing it when spent, and a backward allocates nothing. */
static ddpm_result plan_gradients(cpu_trainer *tr)
{
    const ddpm_graph *g = tr->g;
    for (int i = 0; i < g->n_nodes; i++) {
        /* x and t get no gradient; a value does when its node has weights or reads one that does
         * (the time embedding is a fixed function of t) */
        const ddpm_node *n = &g->nodes[i];
        int need = n->op != OP_TIME_EMBED && (n->w[0] >= 0 || n->w[1] >= 0);
        for (int k = 0; k < 3; k++)
            if (n->in[k] >= 0 && tr->need_grad[n->in[k]])
                need = 1;
        tr->need_grad[n->out] = (char)need;
        if (uses_dropout(tr, n) && value_numel(&g->values[n->in[0]]) > tr->dmasked_numel)
            tr->dmasked_numel = value_numel(&g->values[n->in[0]]);
    }
    tr->dbuf_of = ddpm_calloc((size_t)g->n_values, sizeof *tr->dbuf_of);
    tr->dbuf_numel = ddpm_calloc((size_t)g->n_values, sizeof *tr->dbuf_numel); /* at most one per value */
    char *is_free = ddpm_calloc((size_t)g->n_values, 1);
    if (!tr->dbuf_of || !tr->dbuf_numel || !is_free) {
        free(is_free);
        return DDPM_ERR_NOMEM;
    }
    for (int v = 0; v < g->n_values; v++)
        tr->dbuf_of[v] = -1;
    tr->n_dbufs = 0;
    for (int i = g->n_nodes; i >= 0; i--) {
        /* i == n_nodes: the output's gradient, born before the walk; then node i's inputs are born and its
         * output is spent, as in shard_backward */
        int born[3] = {g->output, -1, -1};
        if (i < g->n_nodes) {
            const ddpm_node *n = &g->nodes[i];
            if (tr->dbuf_of[n->out] < 0) /* no gradient reached this node */
                continue;
            for (int k = 0; k < 3; k++)
                born[k] = n->in[k];
        }
        for (int k = 0; k < 3; k++) {
            int v = born[k];
            if (v < 0 || !tr->need_grad[v] || tr->dbuf_of[v] >= 0)
                continue;
            int64_t need = value_numel(&g->values[v]);
            int best = -1, largest = -1;
            for (int b = 0; b < tr->n_dbufs; b++) {
                if (!is_free[b])
                    continue;
                if (tr->dbuf_numel[b] >= need && (best < 0 || tr->dbuf_numel[b] < tr->dbuf_numel[best]))
                    best = b;
                if (largest < 0 || tr->dbuf_numel[b] > tr->dbuf_numel[largest])
                    largest = b;
            }
            if (best < 0 && largest >= 0) {
                best = largest;
                tr->dbuf_numel[best] = need;
            }
            if (best < 0) {
                best = tr->n_dbufs++;
                tr->dbuf_numel[best] = need;
            }
            is_free[best] = 0;
            tr->dbuf_of[v] = best;
        }
        if (i < g->n_nodes && tr->dbuf_of[g->nodes[i].out] >= 0)
            is_free[tr->dbuf_of[g->nodes[i].out]] = 1;
    }
    free(is_free);
    return DDPM_OK;
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
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    tr->n_shards = threads < B ? threads : B;
    tr->sh = ddpm_calloc((size_t)tr->n_shards, sizeof *tr->sh);
    tr->need_grad = ddpm_calloc((size_t)g->n_values, 1);
    if (tr->n_shards > 1)
        tr->out = malloc((size_t)B * value_numel(&g->values[g->output]) * sizeof(float));
    if (!tr->sh || !tr->need_grad || (tr->n_shards > 1 && !tr->out) || plan_gradients(tr) != DDPM_OK) {
        cpu_train_free(tr);
        return ddpm_fail(DDPM_ERR_NOMEM, "cpu_train_create: out of memory");
    }
    for (int s = 0, first = 0; s < tr->n_shards; s++) {
        tr->sh[s].first = first;
        tr->sh[s].B = B / tr->n_shards + (s < B % tr->n_shards);
        first += tr->sh[s].B;
        ddpm_result res = shard_alloc(tr, &tr->sh[s], s);
        if (res != DDPM_OK) {
            cpu_train_free(tr);
            return res;
        }
    }
    *out = tr;
    return DDPM_OK;
}

static void shard_forward(const cpu_trainer *tr, train_shard *sh, const float *const *weights, const float *x,
                          const float *t)
{
    const ddpm_graph *g = tr->g;
    int B = sh->B;
    memcpy(sh->vals[g->input], x + (size_t)sh->first * value_numel(&g->values[g->input]),
           (size_t)B * value_numel(&g->values[g->input]) * sizeof(float));
    memcpy(sh->vals[g->timestep], t + sh->first, (size_t)B * sizeof(float));
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        const ddpm_value *a = &g->values[n->in[0]], *o = &g->values[n->out];
        if (n->op == OP_ATTENTION) { /* GEMMs: faster than the inference kernel at training batch sizes */
            attention_forward_gemm(sh->vals[n->out], sh->probs[i], sh->vals[n->in[0]], sh->vals[n->in[1]],
                                   sh->vals[n->in[2]], B, a->c, a->h * a->w, n->ip[0]);
            continue;
        }
        if (n->op != OP_CONV2D) {
            cpu_node_forward(g, n, sh->vals, weights, B);
            continue;
        }
        const float *cin = sh->vals[n->in[0]];
        if (uses_dropout(tr, n)) {
            dropout_apply(sh->masked[i], cin, value_numel(a), B, sh->first, i, tr->seed, tr->dropout, 0);
            cin = sh->masked[i];
        }
        conv2d_forward_gemm(sh->vals[n->out], cin, weights[n->w[0]], weights[n->w[1]],
                            n->in[1] >= 0 ? sh->vals[n->in[1]] : NULL,
                            n->in[2] >= 0 ? sh->vals[n->in[2]] : NULL, n->fp[0], B, a->c, a->h, a->w, o->c,
                            n->ip[0], n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5]);
    }
}

ddpm_result cpu_train_forward(cpu_trainer *tr, const float *const *weights, const float *x, const float *t,
                              uint64_t dropout_seed, const float **out)
{
    if (!tr || !weights || !x || !t || !out)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_forward: NULL argument");
    const ddpm_graph *g = tr->g;
    tr->seed = dropout_seed;
#pragma omp parallel for schedule(static, 1) if (tr->n_shards > 1)
    for (int s = 0; s < tr->n_shards; s++)
        shard_forward(tr, &tr->sh[s], weights, x, t);
    tr->forwarded = 1;
    if (tr->n_shards == 1) {
        *out = tr->sh[0].vals[g->output];
        return DDPM_OK;
    }
    int64_t per = value_numel(&g->values[g->output]);
    for (int s = 0; s < tr->n_shards; s++)
        memcpy(tr->out + (size_t)tr->sh[s].first * per, tr->sh[s].vals[g->output],
               (size_t)tr->sh[s].B * per * sizeof(float));
    *out = tr->out;
    return DDPM_OK;
}

/* The gradient of value v in its planned buffer, zeroed when it becomes live; NULL when v needs none. */
static float *grad_of(const cpu_trainer *tr, train_shard *sh, int v)
{
    if (v < 0 || !tr->need_grad[v])
        return NULL;
    if (!sh->dvals[v]) {
        sh->dvals[v] = sh->dbuf[tr->dbuf_of[v]];
        memset(sh->dvals[v], 0, (size_t)sh->B * value_numel(&tr->g->values[v]) * sizeof(float));
    }
    return sh->dvals[v];
}

/* The backward of one shard from its slice of dout, accumulating into grads. Allocates nothing. */
static void shard_backward(const cpu_trainer *tr, train_shard *sh, const float *const *weights,
                           const float *dout, float *const *grads)
{
    const ddpm_graph *g = tr->g;
    int B = sh->B;
    float *d = grad_of(tr, sh, g->output);
    if (!d)
        return;
    int64_t per_out = value_numel(&g->values[g->output]);
    memcpy(d, dout + (size_t)sh->first * per_out, (size_t)B * per_out * sizeof(float));

    for (int i = g->n_nodes - 1; i >= 0; i--) {
        const ddpm_node *n = &g->nodes[i];
        const float *go = sh->dvals[n->out];
        if (!go) /* nothing downstream reached a loss through this node */
            continue;
        const ddpm_value *a = &g->values[n->in[0]], *o = &g->values[n->out];
        const float *x = sh->vals[n->in[0]];
        const float *w = n->w[0] >= 0 ? weights[n->w[0]] : NULL;
        const float *bias = n->w[1] >= 0 ? weights[n->w[1]] : NULL;
        float *dw = n->w[0] >= 0 ? grads[n->w[0]] : NULL;
        float *db = n->w[1] >= 0 ? grads[n->w[1]] : NULL;
        float *dx = grad_of(tr, sh, n->in[0]);
        float *d1 = grad_of(tr, sh, n->in[1]);
        float *d2 = grad_of(tr, sh, n->in[2]);
        switch (n->op) {
        case OP_TIME_EMBED: break; /* no gradient w.r.t. t */
        case OP_LINEAR: linear_backward(dx, dw, db, go, x, w, B, a->c, o->c); break;
        case OP_SILU: silu_backward(dx, go, x, (int64_t)B * value_numel(o)); break;
        case OP_CONV2D: {
            int masked = uses_dropout(tr, n) && dx;
            if (uses_dropout(tr, n)) /* the conv saw the masked input: its input gradient is masked */
                x = sh->masked[i];
            if (masked)
                memset(sh->dmasked, 0, (size_t)B * value_numel(a) * sizeof(float));
            conv2d_backward(masked ? sh->dmasked : dx, dw, db, d1, d2, go, x, w, n->fp[0], B, a->c, a->h,
                            a->w, o->c, n->ip[0], n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5]);
            if (masked)
                dropout_apply(dx, sh->dmasked, value_numel(a), B, sh->first, i, tr->seed, tr->dropout, 1);
            break;
        }
        case OP_GROUPNORM:
            groupnorm_backward(dx, dw, db, go, x, sh->vals[n->out], w, bias, B, a->c, a->h * a->w, n->ip[0],
                               n->fp[0], n->ip[1]);
            break;
        case OP_ATTENTION:
            attention_backward(dx, d1, d2, go, sh->probs[i], x, sh->vals[n->in[1]], sh->vals[n->in[2]], B,
                               a->c, a->h * a->w, n->ip[0]);
            break;
        case OP_UPSAMPLE: upsample_backward(dx, go, B, a->c, a->h, a->w); break;
        case OP_CONCAT: concat_backward(dx, d1, go, B, a->c, g->values[n->in[1]].c, a->h * a->w); break;
        case OP_COUNT: break;
        }
        /* every reader of this node's output came later in the list: its gradient is spent (and its
         * buffer taken by a later one) */
        sh->dvals[n->out] = NULL;
    }
    for (int v = 0; v < g->n_values; v++) /* gradients no node consumed (x, t never get one) */
        sh->dvals[v] = NULL;
}

ddpm_result cpu_train_backward(cpu_trainer *tr, const float *const *weights, const float *dout,
                               float *const *grads)
{
    if (!tr || !weights || !dout || !grads)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_backward: NULL argument");
    if (!tr->forwarded)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_train_backward: no forward to differentiate");
    const ddpm_graph *g = tr->g;
    for (int s = 1; s < tr->n_shards; s++)
        for (int p = 0; p < g->n_params; p++)
            memset(tr->sh[s].grads[p], 0, (size_t)g->params[p].numel * sizeof(float));
#pragma omp parallel for schedule(static, 1) if (tr->n_shards > 1)
    for (int s = 0; s < tr->n_shards; s++)
        shard_backward(tr, &tr->sh[s], weights, dout, s == 0 ? grads : tr->sh[s].grads);
    /* the other shards' gradients, added in shard order */
    for (int p = 0; p < g->n_params; p++) {
        float *gp = grads[p];
        if (!gp)
            continue;
        int64_t n = g->params[p].numel;
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; i++) {
            float acc = 0.0f;
            for (int s = 1; s < tr->n_shards; s++)
                acc += tr->sh[s].grads[p][i];
            gp[i] += acc;
        }
    }
    return DDPM_OK;
}
