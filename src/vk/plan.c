/* plan.c: the Vulkan U-Net's memory plan: concat inputs as channel slices of the concat's storage,
 * first-fit reuse of arena space by liveness, weight arenas, and the memory a batch needs. */
#include "plan.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>

static int64_t align_up(int64_t x)
{
    return (x + VK_PLAN_ALIGN - 1) / VK_PLAN_ALIGN * VK_PLAN_ALIGN;
}

void vk_plan_free(vk_plan *p)
{
    free(p->off);
    free(p->bs);
    free(p->root);
    memset(p, 0, sizeof *p);
}

typedef struct live_block {
    int64_t off, size;
    int root;
} live_block;

/* Lowest offset where `size` elements fit between the live blocks (kept sorted by offset). */
static int64_t first_fit(const live_block *blocks, int n, int64_t size)
{
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        if (blocks[i].off - at >= size)
            return at;
        if (blocks[i].off + blocks[i].size > at)
            at = blocks[i].off + blocks[i].size;
    }
    return at;
}

ddpm_result vk_plan_make(const ddpm_graph *g, int batch, int keep_all, vk_plan *p)
{
    ddpm_result res = DDPM_OK;
    memset(p, 0, sizeof *p);
    int nv = g->n_values, nn = g->n_nodes;
    int *def = NULL, *last = NULL;
    int64_t *choff = NULL; /* offset of a value inside its root, per image */
    live_block *blocks = NULL;
    int n_blocks = 0;
    p->batch = batch;
    p->off = ddpm_calloc((size_t)nv, sizeof *p->off);
    p->bs = ddpm_calloc((size_t)nv, sizeof *p->bs);
    p->root = ddpm_calloc((size_t)nv, sizeof *p->root);
    def = ddpm_calloc((size_t)nv, sizeof *def);
    last = ddpm_calloc((size_t)nv, sizeof *last);
    choff = ddpm_calloc((size_t)nv, sizeof *choff);
    blocks = ddpm_calloc((size_t)nv + 1, sizeof *blocks);
    if (!p->off || !p->bs || !p->root || !def || !last || !choff || !blocks) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int v = 0; v < nv; v++) {
        p->root[v] = v;
        def[v] = nn + 1; /* never written */
        last[v] = -2;
    }
    def[g->input] = -1; /* copied in before the first node */
    for (int i = 0; i < nn; i++) {
        const ddpm_node *n = &g->nodes[i];
        def[n->out] = i;
        for (int k = 0; k < 3; k++)
            if (n->in[k] >= 0)
                last[n->in[k]] = i;
    }
    last[g->output] = nn; /* copied out after the last node */

    /* Concat: both inputs are written straight into their channel slice of the output. */
    for (int i = 0; i < nn; i++) {
        const ddpm_node *n = &g->nodes[i];
        if (n->op != OP_CONCAT)
            continue;
        int64_t slice = 0;
        for (int k = 0; k < 2; k++) {
            int v = n->in[k];
            if (v == g->input || v == g->timestep || p->root[v] != v || v == n->out) {
                res = ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %s: input %d cannot be written in place",
                                n->name, v);
                goto cleanup;
            }
            for (int j = 0; j < nv; j++)
                if (p->root[j] == v && j != v) { /* v is itself a concat output */
                    res = ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %s: nested concat", n->name);
                    goto cleanup;
                }
            p->root[v] = n->out;
            choff[v] = slice;
            slice += value_numel(&g->values[v]);
        }
    }
    /* A root lives from the first write of any member to the last read of any member. */
    for (int v = 0; v < nv; v++) {
        int r = p->root[v];
        if (r != v) {
            if (def[v] < def[r])
                def[r] = def[v];
            if (last[v] > last[r])
                last[r] = last[v];
        }
    }
    for (int v = 0; v < nv; v++)
        if (p->root[v] == v && def[v] <= nn && last[v] < def[v])
            last[v] = def[v]; /* written, never read: freed right after its node */

    /* Walk the nodes: allocate the roots first written at step i, then free those last read there. */
    for (int i = -1; i <= nn; i++) {
        for (int v = 0; v < nv; v++) {
            if (p->root[v] != v || def[v] != i)
                continue;
            int64_t size = align_up((int64_t)batch * value_numel(&g->values[v]));
            int64_t at = first_fit(blocks, n_blocks, size);
            int pos = 0;
            while (pos < n_blocks && blocks[pos].off < at)
                pos++;
            memmove(blocks + pos + 1, blocks + pos, (size_t)(n_blocks - pos) * sizeof *blocks);
            blocks[pos] = (live_block){at, size, v};
            n_blocks++;
            p->off[v] = at;
            if (at + size > p->arena)
                p->arena = at + size;
        }
        if (keep_all)
            continue;
        for (int b = 0; b < n_blocks;) {
            if (last[blocks[b].root] == i) {
                memmove(blocks + b, blocks + b + 1, (size_t)(n_blocks - b - 1) * sizeof *blocks);
                n_blocks--;
            } else {
                b++;
            }
        }
    }
    for (int v = 0; v < nv; v++) {
        int r = p->root[v];
        if (def[r] > nn) {
            p->off[v] = -1; /* never stored (the timestep is read from the coefficient table) */
            p->bs[v] = 0;
            continue;
        }
        p->off[v] = p->off[r] + choff[v];
        p->bs[v] = value_numel(&g->values[r]);
    }
cleanup:
    free(def);
    free(last);
    free(choff);
    free(blocks);
    if (res != DDPM_OK)
        vk_plan_free(p);
    return res;
}

int vk_plan_weights(const ddpm_graph *g, int elem_bytes, uint64_t max_bytes, int *param_arena,
                    int64_t *param_off, int64_t *arena_elems, int max_arenas)
{
    int n_arenas = 0;
    int64_t fill = 0, max_elems = (int64_t)(max_bytes / (uint64_t)elem_bytes);
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        int64_t need = 0;
        for (int k = 0; k < 2; k++)
            if (n->w[k] >= 0)
                need += align_up(g->params[n->w[k]].numel);
        if (need == 0)
            continue;
        if (need > max_elems)
            return -1;
        if (n_arenas == 0 || fill + need > max_elems) {
            if (arena_elems && n_arenas > 0 && n_arenas - 1 < max_arenas)
                arena_elems[n_arenas - 1] = fill;
            n_arenas++;
            fill = 0;
        }
        for (int k = 0; k < 2; k++) {
            int pid = n->w[k];
            if (pid < 0)
                continue;
            if (param_arena)
                param_arena[pid] = n_arenas - 1;
            if (param_off)
                param_off[pid] = fill;
            fill += align_up(g->params[pid].numel);
        }
    }
    if (arena_elems && n_arenas > 0 && n_arenas - 1 < max_arenas)
        arena_elems[n_arenas - 1] = fill;
    return n_arenas;
}

static uint64_t weights_bytes(const ddpm_graph *g, int elem_bytes, uint64_t max_range)
{
    int64_t elems[64];
    int n = vk_plan_weights(g, elem_bytes, max_range, NULL, NULL, elems, 64);
    if (n < 0 || n > 64)
        return UINT64_MAX;
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += (uint64_t)elems[i] * (uint64_t)elem_bytes;
    return total;
}

/* Arena bytes for `batch` images (UINT64_MAX on failure). */
static uint64_t arena_bytes(const ddpm_graph *g, int batch, int elem_bytes)
{
    vk_plan p;
    if (vk_plan_make(g, batch, 0, &p) != DDPM_OK)
        return UINT64_MAX;
    uint64_t b = (uint64_t)p.arena * (uint64_t)elem_bytes;
    vk_plan_free(&p);
    return b;
}

ddpm_result vk_plan_memory(const ddpm_graph *g, int n, int elem_bytes, uint64_t max_range, int n_steps,
                           vk_mem_estimate *e)
{
    memset(e, 0, sizeof *e);
    if (n < 1)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan: %d images", n);
    e->weights = weights_bytes(g, elem_bytes, max_range);
    if (e->weights == UINT64_MAX)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                         "vulkan: a layer's weights exceed the device's storage buffer range of %llu bytes",
                         (unsigned long long)max_range);
    /* The arena grows linearly with the batch: the most images whose arena fits the range. */
    uint64_t one = arena_bytes(g, 1, elem_bytes);
    if (one == UINT64_MAX)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: cannot plan the activations");
    int chunk = 0;
    if (one <= max_range) {
        chunk = (int)(max_range / one < (uint64_t)n ? max_range / one : (uint64_t)n);
        while (chunk > 1 && arena_bytes(g, chunk, elem_bytes) > max_range)
            chunk--;
        if (chunk < 1)
            chunk = 1;
    }
    e->chunk = chunk;
    e->activations = chunk ? arena_bytes(g, chunk, elem_bytes) : one;
    int64_t per = value_numel(&g->values[g->input]) + value_numel(&g->values[g->output]);
    e->state = (uint64_t)n * (uint64_t)per * sizeof(float);
    e->total = e->weights + e->activations + e->state + (uint64_t)n_steps * 12 * sizeof(float) + 4;
    return DDPM_OK;
}

int vk_plan_max_batch(const ddpm_graph *g, int n, int elem_bytes, uint64_t max_range, int n_steps,
                      uint64_t budget)
{
    int64_t per = value_numel(&g->values[g->input]);
    int lo = 0, hi = n;
    while (lo < hi) { /* the largest fitting count, fit(k) being monotone in k */
        int mid = lo + (hi - lo + 1) / 2;
        vk_mem_estimate e;
        int ok = vk_plan_memory(g, mid, elem_bytes, max_range, n_steps, &e) == DDPM_OK && e.chunk > 0 &&
                 e.total <= budget && (uint64_t)mid * (uint64_t)per * sizeof(float) <= max_range;
        if (ok)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}
