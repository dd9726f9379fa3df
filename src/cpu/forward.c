/* forward.c: the CPU backend's graph walk: one node at a time through the ops of cpu.h, and the whole
 * U-Net with activations allocated when written and freed right after their last reader. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

void cpu_node_forward(const ddpm_graph *g, const ddpm_node *n, float *const *vals,
                      const float *const *weights, int B)
{
    const ddpm_value *o = &g->values[n->out];
    const ddpm_value *a = &g->values[n->in[0]];
    float *out = vals[n->out];
    const float *x = vals[n->in[0]];
    const float *w = n->w[0] >= 0 ? weights[n->w[0]] : NULL;
    const float *bias = n->w[1] >= 0 ? weights[n->w[1]] : NULL;
    switch (n->op) {
    case OP_TIME_EMBED: time_embed_forward(out, x, B, o->c, n->fp[0], n->ip[0]); break;
    case OP_LINEAR: linear_forward(out, x, w, bias, B, a->c, o->c); break;
    case OP_SILU: silu_forward(out, x, (int64_t)B * value_numel(o)); break;
    case OP_CONV2D:
        conv2d_forward(out, x, w, bias, n->in[1] >= 0 ? vals[n->in[1]] : NULL,
                       n->in[2] >= 0 ? vals[n->in[2]] : NULL, n->fp[0], B, a->c, a->h, a->w, o->c, n->ip[0],
                       n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5]);
        break;
    case OP_GROUPNORM:
        groupnorm_forward(out, x, w, bias, B, a->c, a->h * a->w, n->ip[0], n->fp[0], n->ip[1]);
        break;
    case OP_ATTENTION:
        attention_forward(out, x, vals[n->in[1]], vals[n->in[2]], B, a->c, a->h * a->w, n->ip[0]);
        break;
    case OP_UPSAMPLE: upsample_forward(out, x, B, a->c, a->h, a->w); break;
    case OP_CONCAT:
        concat_forward(out, x, vals[n->in[1]], B, a->c, g->values[n->in[1]].c, a->h * a->w);
        break;
    case OP_COUNT: break;
    }
}

ddpm_result cpu_unet_forward(const ddpm_graph *g, const float *const *weights, int B, const float *x,
                             const float *t, float *out)
{
    if (!g || !weights || !x || !t || !out || B < 1)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_unet_forward: bad arguments");
    if (g->n_nodes < 1 || g->input < 0 || g->timestep < 0 || g->output < 0)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_unet_forward: empty graph");
    ddpm_result res = DDPM_OK;
    float **vals = ddpm_calloc((size_t)g->n_values, sizeof *vals);
    int *last = ddpm_calloc((size_t)g->n_values, sizeof *last); /* index of the last node reading a value */
    if (!vals || !last) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int v = 0; v < g->n_values; v++)
        last[v] = -1;
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < 3; k++)
            if (g->nodes[i].in[k] >= 0)
                last[g->nodes[i].in[k]] = i;
    last[g->output] = g->n_nodes; /* read by the final copy */

    int64_t nx = B * value_numel(&g->values[g->input]);
    vals[g->input] = malloc((size_t)nx * sizeof(float));
    vals[g->timestep] = malloc((size_t)B * sizeof(float));
    if (!vals[g->input] || !vals[g->timestep]) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "cpu_unet_forward: out of memory for the input");
        goto cleanup;
    }
    memcpy(vals[g->input], x, (size_t)nx * sizeof(float));
    memcpy(vals[g->timestep], t, (size_t)B * sizeof(float));

    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        int64_t numel = B * value_numel(&g->values[n->out]);
        vals[n->out] = malloc((size_t)numel * sizeof(float));
        if (!vals[n->out]) {
            res = ddpm_fail(DDPM_ERR_NOMEM, "cpu_unet_forward: out of memory at %s (%lld floats)", n->name,
                            (long long)numel);
            goto cleanup;
        }
        cpu_node_forward(g, n, vals, weights, B);
        /* free every input whose last reader this was, and an output nobody reads */
        for (int k = 0; k < 3; k++) {
            int v = n->in[k];
            if (v >= 0 && last[v] == i && vals[v]) {
                free(vals[v]);
                vals[v] = NULL;
            }
        }
        if (last[n->out] < i) {
            free(vals[n->out]);
            vals[n->out] = NULL;
        }
    }
    memcpy(out, vals[g->output], (size_t)(B * value_numel(&g->values[g->output])) * sizeof(float));

cleanup:
    if (vals)
        for (int v = 0; v < g->n_values; v++)
            free(vals[v]);
    free(vals);
    free(last);
    return res;
}
