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
    free(p->buf);
    free(p->buf_elems);
    memset(p, 0, sizeof *p);
}

typedef struct live_block {
    int buf;
    int64_t off, size;
    int group;
} live_block;

/* Lowest offset of buffer `buf` where `size` elements fit between its live blocks (blocks sorted by
 * buffer, then offset). */
static int64_t first_fit(const live_block *blocks, int n, int buf, int64_t size)
{
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        if (blocks[i].buf != buf)
            continue;
        if (blocks[i].off - at >= size)
            return at;
        if (blocks[i].off + blocks[i].size > at)
            at = blocks[i].off + blocks[i].size;
    }
    return at;
}

static int find(int *parent, int v)
{
    while (parent[v] != v)
        v = parent[v] = parent[parent[v]];
    return v;
}

/* Places the stored roots: each group (grp[v], the representative of root v's group) is one block
 * holding its members side by side, live from the first write of any member to the last read of any,
 * in the first buffer where it fits below max_elems (0: one unbounded buffer), or in buffer fixed[r]
 * when fixed is given (its size then unchecked). */
static ddpm_result place(const ddpm_graph *g, const int *grp, const int *def, const int *last, int batch,
                         int keep_all, int64_t max_elems, const int *fixed, vk_plan *p)
{
    ddpm_result res = DDPM_OK;
    int nv = g->n_values, nn = g->n_nodes;
    int64_t *gsize = ddpm_calloc((size_t)nv, sizeof *gsize), *goff = ddpm_calloc((size_t)nv, sizeof *goff);
    int64_t *gat = ddpm_calloc((size_t)nv, sizeof *gat);
    int *gdef = ddpm_calloc((size_t)nv, sizeof *gdef), *glast = ddpm_calloc((size_t)nv, sizeof *glast);
    int *gbuf = ddpm_calloc((size_t)nv, sizeof *gbuf);
    live_block *blocks = ddpm_calloc((size_t)nv + 1, sizeof *blocks);
    int n_blocks = 0, cap_bufs = 0;
    free(p->buf_elems);
    p->buf_elems = NULL;
    p->n_bufs = 0;
    p->arena = 0;
    if (!gsize || !goff || !gat || !gdef || !glast || !gbuf || !blocks) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int v = 0; v < nv; v++) {
        gdef[v] = nn + 1;
        glast[v] = -2;
    }
    for (int v = 0; v < nv; v++) {
        if (p->root[v] != v || def[v] > nn)
            continue;
        int r = grp[v];
        goff[v] = gsize[r];
        gsize[r] += align_up((int64_t)batch * value_numel(&g->values[v]));
        if (def[v] < gdef[r])
            gdef[r] = def[v];
        if (last[v] > glast[r])
            glast[r] = last[v];
    }
    /* Walk the nodes: allocate the groups first written at step i, then free those last read there. */
    for (int i = -1; i <= nn; i++) {
        for (int r = 0; r < nv; r++) {
            if (gdef[r] != i)
                continue;
            int64_t size = gsize[r], at = 0;
            if (!fixed && max_elems > 0 && size > max_elems) {
                const ddpm_value *x = &g->values[r];
                res = ddpm_fail(DDPM_ERR_UNSUPPORTED,
                                "vulkan: a %dx%dx%d tensor of %d image%s (with the values read beside it) "
                                "needs %lld elements, above the buffer range of %lld",
                                x->c, x->h, x->w, batch, batch == 1 ? "" : "s", (long long)size,
                                (long long)max_elems);
                goto cleanup;
            }
            int b = 0;
            for (; b < p->n_bufs; b++) {
                at = first_fit(blocks, n_blocks, b, size);
                if (fixed ? b == fixed[r] : max_elems <= 0 || at + size <= max_elems)
                    break;
            }
            while (b == p->n_bufs) { /* a new buffer (until buffer fixed[r] exists) */
                if (p->n_bufs == cap_bufs) {
                    int cap = cap_bufs ? cap_bufs * 2 : 4;
                    int64_t *e = realloc(p->buf_elems, (size_t)cap * sizeof *e);
                    if (!e) {
                        res = ddpm_fail(DDPM_ERR_NOMEM, "out of memory planning the activations");
                        goto cleanup;
                    }
                    p->buf_elems = e;
                    cap_bufs = cap;
                }
                p->buf_elems[p->n_bufs++] = 0;
                at = 0;
                if (fixed && b < fixed[r])
                    b++;
            }
            int pos = 0;
            while (pos < n_blocks && (blocks[pos].buf < b || (blocks[pos].buf == b && blocks[pos].off < at)))
                pos++;
            memmove(blocks + pos + 1, blocks + pos, (size_t)(n_blocks - pos) * sizeof *blocks);
            blocks[pos] = (live_block){b, at, size, r};
            n_blocks++;
            gbuf[r] = b;
            gat[r] = at;
            if (at + size > p->buf_elems[b])
                p->buf_elems[b] = at + size;
        }
        if (keep_all)
            continue;
        for (int k = 0; k < n_blocks;) {
            if (glast[blocks[k].group] == i) {
                memmove(blocks + k, blocks + k + 1, (size_t)(n_blocks - k - 1) * sizeof *blocks);
                n_blocks--;
            } else {
                k++;
            }
        }
    }
    for (int b = 0; b < p->n_bufs; b++)
        p->arena += p->buf_elems[b];
    for (int v = 0; v < nv; v++) {
        if (p->root[v] != v || def[v] > nn)
            continue;
        p->off[v] = gat[grp[v]] + goff[v];
        p->buf[v] = gbuf[grp[v]];
    }
cleanup:
    free(gsize);
    free(goff);
    free(gat);
    free(gdef);
    free(glast);
    free(gbuf);
    free(blocks);
    return res;
}

/* Re-places every root alone in the buffer the grouped placement gave it; keeps the grouped placement
 * when a buffer would exceed max_elems. */
static ddpm_result split_groups(const ddpm_graph *g, const int *def, const int *last, int batch, int keep_all,
                                int64_t max_elems, vk_plan *p)
{
    ddpm_result res = DDPM_OK;
    int nv = g->n_values;
    vk_plan q = *p; /* shares root; off, buf and buf_elems of its own */
    q.off = ddpm_calloc((size_t)nv, sizeof *q.off);
    q.buf = ddpm_calloc((size_t)nv, sizeof *q.buf);
    q.buf_elems = NULL;
    int *self = ddpm_calloc((size_t)nv, sizeof *self);
    if (!q.off || !q.buf || !self) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int v = 0; v < nv; v++)
        self[v] = v;
    TRY(place(g, self, def, last, batch, keep_all, max_elems, p->buf, &q));
    int fits = q.n_bufs == p->n_bufs;
    for (int b = 0; b < q.n_bufs; b++)
        fits &= q.buf_elems[b] <= max_elems;
    if (fits && q.arena < p->arena) {
        int64_t *t = p->off;
        p->off = q.off;
        q.off = t;
        int *tb = p->buf;
        p->buf = q.buf;
        q.buf = tb;
        int64_t *te = p->buf_elems;
        p->buf_elems = q.buf_elems;
        q.buf_elems = te;
        p->arena = q.arena;
    }
cleanup:
    free(q.off);
    free(q.buf);
    free(q.buf_elems);
    free(self);
    return res;
}

ddpm_result vk_plan_make(const ddpm_graph *g, int batch, int keep_all, int64_t max_elems, vk_plan *p)
{
    ddpm_result res = DDPM_OK;
    memset(p, 0, sizeof *p);
    int nv = g->n_values, nn = g->n_nodes;
    int *def = NULL, *last = NULL, *grp = NULL;
    int64_t *choff = NULL; /* offset of a value inside its root, per image */
    p->batch = batch;
    p->off = ddpm_calloc((size_t)nv, sizeof *p->off);
    p->bs = ddpm_calloc((size_t)nv, sizeof *p->bs);
    p->root = ddpm_calloc((size_t)nv, sizeof *p->root);
    p->buf = ddpm_calloc((size_t)nv, sizeof *p->buf);
    def = ddpm_calloc((size_t)nv, sizeof *def);
    last = ddpm_calloc((size_t)nv, sizeof *last);
    grp = ddpm_calloc((size_t)nv, sizeof *grp);
    choff = ddpm_calloc((size_t)nv, sizeof *choff);
    if (!p->off || !p->bs || !p->root || !p->buf || !def || !last || !grp || !choff) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int v = 0; v < nv; v++) {
        p->root[v] = v;
        grp[v] = v;
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

    /* One buffer when everything fits it (or nothing limits it); else groups of the values each node
     * reads together, spread over several buffers. */
    TRY(place(g, grp, def, last, batch, keep_all, 0, NULL, p));
    if (max_elems > 0 && p->arena > max_elems) {
        for (int i = 0; i < nn; i++) {
            const ddpm_node *n = &g->nodes[i];
            if (n->op == OP_CONCAT || n->op == OP_TIME_EMBED)
                continue;
            int first = -1;
            for (int k = 0; k < (n->op == OP_LINEAR ? 1 : 3); k++) {
                int v = n->in[k];
                if (v < 0 || def[p->root[v]] > nn)
                    continue;
                int r = find(grp, p->root[v]);
                if (first < 0)
                    first = r;
                else if (r != first)
                    grp[r] = first;
            }
        }
        for (int v = 0; v < nv; v++)
            grp[v] = find(grp, v);
        TRY(place(g, grp, def, last, batch, keep_all, max_elems, NULL, p));
        /* A group kept whole holds its members' space over all their lives; now that each group has its
         * buffer, place its members one by one there by their own lives. Kept unless a buffer outgrows
         * max_elems (first fit is no guarantee). */
        TRY(split_groups(g, def, last, batch, keep_all, max_elems, p));
    }
    for (int v = 0; v < nv; v++) {
        int r = p->root[v];
        if (def[r] > nn) {
            p->off[v] = -1; /* never stored (the timestep is read from the coefficient table) */
            p->buf[v] = -1;
            p->bs[v] = 0;
            continue;
        }
        p->off[v] = p->off[r] + (r != v ? choff[v] : 0);
        p->buf[v] = p->buf[r];
        p->bs[v] = value_numel(&g->values[r]);
    }
cleanup:
    free(def);
    free(last);
    free(grp);
    free(choff);
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

/* Activation bytes of `batch` images, every buffer within max_range (0: one buffer); UINT64_MAX when
 * impossible. */
static uint64_t arena_bytes(const ddpm_graph *g, int batch, int elem_bytes, uint64_t max_range)
{
    vk_plan p;
    if (vk_plan_make(g, batch, 0, (int64_t)(max_range / (uint64_t)elem_bytes), &p) != DDPM_OK)
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
    /* One image's activations, in one buffer when they fit the range, else spread over several. */
    uint64_t whole = arena_bytes(g, 1, elem_bytes, 0);
    if (whole == UINT64_MAX)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: cannot plan the activations");
    uint64_t one = arena_bytes(g, 1, elem_bytes, max_range);
    int chunk = 0;
    if (one != UINT64_MAX) {
        /* Chunks of images whose activations fit one buffer; a single image when they do not. The
         * activations grow linearly with the batch. */
        uint64_t cap = one > max_range ? one : max_range;
        chunk = (int)(cap / one < (uint64_t)n ? cap / one : (uint64_t)n);
        while (chunk > 1 && arena_bytes(g, chunk, elem_bytes, max_range) > cap)
            chunk--;
        if (chunk < 1)
            chunk = 1;
    }
    e->chunk = chunk;
    e->activations = chunk ? arena_bytes(g, chunk, elem_bytes, max_range) : whole;
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
