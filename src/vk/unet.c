/* unet.c: the U-Net on the GPU: one program per kernel (tile sizes from the device limits), weights and
 * activations in buffers within the storage buffer range placed by vk_plan, and the recording of an
 * evaluation with barriers only where a node touches what an unsynchronised earlier one wrote. */
#include "vk_internal.h"

#include "plan.h"
#include "safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define VK_MAX_ATTN_DIMS 8
#define VK_MAX_WEIGHT_ARENAS 64
#define VK_MAX_ACT_BUFFERS 64

typedef struct attn_prog {
    uint32_t d;
    vk_program prog;
} attn_prog;

struct vk_unet {
    vk_context *ctx;
    const ddpm_graph *g;
    int chunk, fp16, elem;
    vk_plan plan;
    vk_buffer abuf[VK_MAX_ACT_BUFFERS]; /* activations */
    int *node_set;                      /* per node: its descriptor set in its program */
    vk_buffer warena[VK_MAX_WEIGHT_ARENAS];
    int n_warena;
    int *param_arena;
    int64_t *param_off;
    vk_program conv, groupnorm, time_embed, eltwise;
    vk_program conv_narrow; /* register-tile conv with a 16-wide workgroup, for small images */
    attn_prog attn[VK_MAX_ATTN_DIMS];
    int n_attn;
    uint32_t conv_tm, conv_tn; /* output tile of one conv workgroup */
    int conv_reg;              /* the register-tile conv (CPU devices), else the shared-memory GEMM */
    uint32_t group;            /* vk_unet_desc.group */
    /* hazard tracking while recording: ranges (buffer << 40 | element) written / read since the last
     * barrier */
    int64_t (*pend_w)[2], (*pend_r)[2];
    int n_pend_w, n_pend_r, cap_pend;
    uint32_t n_dispatches, n_barriers; /* recorded by the last vk_unet_record */
};

static uint32_t floor_pow2(uint32_t x)
{
    uint32_t p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

/* The workgroup size of the kernels: 256 invocations on GPUs; 64 on CPU devices (lavapipe runs a
 * workgroup on one thread and pays per invocation at every barrier: 64 measured 3-7x faster than 256
 * there); never above the device limit. */
static uint32_t max_group(const vk_context *ctx, uint32_t asked)
{
    const vk_limits *l = &ctx->limits;
    uint32_t n = asked ? asked : ctx->info.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? 64 : 256;
    if (l->max_invocations < n)
        n = l->max_invocations;
    return floor_pow2(n);
}

/* The head size of an attention node. */
static uint32_t attn_dim(const vk_unet *u, const ddpm_node *n)
{
    return (uint32_t)(u->g->values[n->in[0]].c / n->ip[0]);
}

/* One descriptor set per node in its program (the eltwise program's sets 0 and 1 are the copies in
 * and out): node_set, and the sets each program needs. */
static void number_sets(vk_unet *u, uint32_t *conv, uint32_t *gn, uint32_t *te, uint32_t *elt)
{
    *conv = *gn = *te = 0;
    *elt = 2;
    for (int i = 0; i < u->g->n_nodes; i++) {
        const ddpm_node *n = &u->g->nodes[i];
        uint32_t *c = NULL;
        switch (n->op) {
        case OP_LINEAR:
        case OP_CONV2D: c = conv; break;
        case OP_GROUPNORM: c = gn; break;
        case OP_TIME_EMBED: c = te; break;
        case OP_SILU:
        case OP_UPSAMPLE: c = elt; break;
        case OP_ATTENTION: {
            uint32_t k = 0;
            for (int j = 0; j < i; j++)
                k += u->g->nodes[j].op == OP_ATTENTION && attn_dim(u, &u->g->nodes[j]) == attn_dim(u, n);
            u->node_set[i] = (int)k;
            break;
        }
        default: break;
        }
        if (c)
            u->node_set[i] = (int)(*c)++;
    }
}

static ddpm_result create_programs(vk_unet *u)
{
    ddpm_result res = DDPM_OK;
    vk_context *ctx = u->ctx;
    const vk_limits *l = &ctx->limits;
    int f16 = u->fp16;
    uint32_t sets, gn_sets, te_sets, elt_sets;
    number_sets(u, &sets, &gn_sets, &te_sets, &elt_sets);

    /* conv: the register-tile kernel on CPU devices, else the shared-memory GEMM whose K slice shrinks
     * until both tiles fit the device's shared memory */
    uint32_t inv = max_group(ctx, u->group);
    vk_program_desc cd = {.n_buffers = 3, .push_size = sizeof(vk_conv_push), .max_sets = sets};
    uint32_t conv_spec[1] = {16};
    if (u->conv_reg) {
        /* CPU devices: a register tile of pixels x channels per invocation (shared.h), no shared memory */
        cd.shader = f16 ? VK_SHADER_conv2d_reg_f16 : VK_SHADER_conv2d_reg_f32;
        cd.local_size[0] = inv;
        cd.local_size[1] = 1;
        u->conv_tm = 4 * VK_CONV_REG_RC;
        u->conv_tn = VK_CONV_REG_RP * inv;
        vk_program_desc nd = cd;
        nd.local_size[0] = inv < 16 ? inv : 16;
        TRY(vk_program_create(ctx, &nd, &u->conv_narrow));
    } else {
        /* threads: wm (a multiple of 4, so the workgroup is a multiple of the 4 wn-wide pixel tile)
         * along channels, wn along pixels; 4x4 outputs each */
        uint32_t wm = inv >= 64 ? inv / 16 : 4, wn = inv / wm;
        if (wn > l->max_group_size[0] || wm > l->max_group_size[1] || wn < 1)
            return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: workgroup %ux%u exceeds the device", wn, wm);
        uint32_t rm = 4, rn = 4, tk = 16; /* rm, rn: fixed in conv2d.comp */
        /* shared: the A and B tiles plus 3 ints per K row; tk stays a multiple of the rows per load pass */
        while (tk > wm / 4 && (uint64_t)tk * (wm * rm + wn * rn + 3) * 4 > l->max_shared_memory)
            tk /= 2;
        if ((uint64_t)tk * (wm * rm + wn * rn + 3) * 4 > l->max_shared_memory || tk < wm / 4 || tk < 1)
            return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %u bytes of shared memory are too few",
                             l->max_shared_memory);
        cd.shader = f16 ? VK_SHADER_conv2d_f16 : VK_SHADER_conv2d_f32;
        cd.local_size[0] = wn;
        cd.local_size[1] = wm;
        conv_spec[0] = tk;
        cd.spec = conv_spec;
        cd.n_spec = 1;
        u->conv_tm = wm * rm;
        u->conv_tn = wn * rn;
    }
    TRY(vk_program_create(ctx, &cd, &u->conv));

    vk_program_desc gd = {.shader = f16 ? VK_SHADER_groupnorm_f16 : VK_SHADER_groupnorm_f32,
                          .n_buffers = 3,
                          .push_size = sizeof(vk_groupnorm_push),
                          .local_size = {inv, 1, 1},
                          .max_sets = gn_sets};
    TRY(vk_program_create(ctx, &gd, &u->groupnorm));

    vk_program_desc td = {.shader = f16 ? VK_SHADER_time_embed_f16 : VK_SHADER_time_embed_f32,
                          .n_buffers = 3,
                          .push_size = sizeof(vk_time_embed_push),
                          .local_size = {inv > 64 ? 64 : inv, 1, 1},
                          .max_sets = te_sets};
    TRY(vk_program_create(ctx, &td, &u->time_embed));

    vk_program_desc ed = {.shader = f16 ? VK_SHADER_eltwise_f16 : VK_SHADER_eltwise_f32,
                          .n_buffers = 3,
                          .push_size = sizeof(vk_eltwise_push),
                          .local_size = {inv, 1, 1},
                          .max_sets = elt_sets};
    TRY(vk_program_create(ctx, &ed, &u->eltwise));

    /* attention: one program per head size (a specialization constant) */
    for (int i = 0; i < u->g->n_nodes; i++) {
        const ddpm_node *n = &u->g->nodes[i];
        if (n->op != OP_ATTENTION)
            continue;
        uint32_t d = attn_dim(u, n), n_sets = 0;
        for (int j = 0; j < u->g->n_nodes; j++)
            n_sets += u->g->nodes[j].op == OP_ATTENTION && attn_dim(u, &u->g->nodes[j]) == d;
        int found = 0;
        for (int k = 0; k < u->n_attn; k++)
            found |= u->attn[k].d == d;
        if (found)
            continue;
        if (u->n_attn == VK_MAX_ATTN_DIMS)
            return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: more than %d attention head sizes",
                             VK_MAX_ATTN_DIMS);
        /* 64 invocations (fewer on a narrow device): one key each for the scores, up to 8 channels
         * each for the output; 4 queries per workgroup (fixed in attention.comp) */
        uint32_t lanes = inv < 64 ? inv : 64;
        if (lanes * 8 < d)
            return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                             "vulkan: attention head size %u is above %u for this device's workgroup size", d,
                             lanes * 8);
        if ((uint64_t)2 * 4 * lanes * 4 > l->max_shared_memory)
            return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %u bytes of shared memory are too few",
                             l->max_shared_memory);
        uint32_t spec[1] = {d};
        vk_program_desc ad = {.shader = f16 ? VK_SHADER_attention_f16 : VK_SHADER_attention_f32,
                              .n_buffers = 2,
                              .push_size = sizeof(vk_attention_push),
                              .local_size = {lanes, 1, 1},
                              .spec = spec,
                              .n_spec = 1,
                              .max_sets = n_sets};
        u->attn[u->n_attn].d = d;
        TRY(vk_program_create(ctx, &ad, &u->attn[u->n_attn].prog));
        u->n_attn++;
    }
cleanup:
    return res;
}

/* The activation buffer of value v. */
static const vk_buffer *act_buf(const vk_unet *u, int v)
{
    return &u->abuf[u->plan.buf[v]];
}

/* Points every node's descriptor set at the buffer of its reads (one: vk_plan groups them), its
 * weight arena and the buffer of its output. */
static ddpm_result bind_programs(vk_unet *u, const vk_unet_desc *d)
{
    ddpm_result res = DDPM_OK;
    vk_context *ctx = u->ctx;
    const ddpm_graph *g = u->g;
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *n = &g->nodes[i];
        uint32_t set = (uint32_t)u->node_set[i];
        const vk_buffer *out = act_buf(u, n->out);
        const vk_buffer *in = n->op == OP_TIME_EMBED || n->op == OP_CONCAT ? out : act_buf(u, n->in[0]);
        for (int k = 1; k < 3 && n->op != OP_LINEAR && n->op != OP_TIME_EMBED && n->op != OP_CONCAT; k++)
            if (n->in[k] >= 0 && u->plan.buf[n->in[k]] != u->plan.buf[n->in[0]])
                return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %s reads tensors from two activation buffers",
                                 n->name);
        const vk_buffer *w = n->w[0] >= 0 ? &u->warena[u->param_arena[n->w[0]]] : NULL;
        switch (n->op) {
        case OP_LINEAR:
        case OP_CONV2D: {
            const vk_buffer *bufs[3] = {in, w, out};
            TRY(vk_program_bind(ctx, &u->conv, set, bufs));
            if (u->conv_narrow.pipeline)
                TRY(vk_program_bind(ctx, &u->conv_narrow, set, bufs));
            break;
        }
        case OP_GROUPNORM: {
            const vk_buffer *bufs[3] = {in, w, out};
            TRY(vk_program_bind(ctx, &u->groupnorm, set, bufs));
            break;
        }
        case OP_TIME_EMBED: {
            const vk_buffer *bufs[3] = {out, d->coef, d->step};
            TRY(vk_program_bind(ctx, &u->time_embed, set, bufs));
            break;
        }
        case OP_SILU:
        case OP_UPSAMPLE: {
            const vk_buffer *bufs[3] = {in, d->x, out};
            TRY(vk_program_bind(ctx, &u->eltwise, set, bufs));
            break;
        }
        case OP_ATTENTION: {
            const vk_buffer *bufs[2] = {in, out};
            for (int k = 0; k < u->n_attn; k++)
                if (u->attn[k].d == attn_dim(u, n))
                    TRY(vk_program_bind(ctx, &u->attn[k].prog, set, bufs));
            break;
        }
        default: break;
        }
    }
    const vk_buffer *ex[3] = {act_buf(u, g->input), d->x, act_buf(u, g->input)};
    const vk_buffer *eo[3] = {act_buf(u, g->output), d->out, act_buf(u, g->output)};
    TRY(vk_program_bind(ctx, &u->eltwise, 0, ex));
    TRY(vk_program_bind(ctx, &u->eltwise, 1, eo));
cleanup:
    return res;
}

static ddpm_result upload_weights(vk_unet *u, const float *const *weights, const int64_t *arena_elems)
{
    ddpm_result res = DDPM_OK;
    const ddpm_graph *g = u->g;
    void *host = NULL;
    for (int a = 0; a < u->n_warena; a++) {
        size_t bytes = (size_t)arena_elems[a] * (size_t)u->elem;
        char name[32];
        snprintf(name, sizeof name, "weights%d", a);
        TRY(vk_buffer_create(u->ctx, bytes ? bytes : 4, VK_MEM_DEVICE, name, &u->warena[a]));
        host = ddpm_calloc(bytes ? bytes : 4, 1);
        if (!host) {
            res = DDPM_ERR_NOMEM;
            goto cleanup;
        }
        for (int p = 0; p < g->n_params; p++) {
            if (u->param_arena[p] != a)
                continue;
            const float *src = weights[p];
            int64_t n = g->params[p].numel;
            if (u->fp16) {
                uint16_t *dst = (uint16_t *)host + u->param_off[p];
                for (int64_t i = 0; i < n; i++)
                    dst[i] = st_float_to_half(src[i]);
            } else {
                memcpy((float *)host + u->param_off[p], src, (size_t)n * sizeof(float));
            }
        }
        TRY(vk_buffer_upload(u->ctx, &u->warena[a], 0, host, bytes ? bytes : 4));
        free(host);
        host = NULL;
    }
cleanup:
    free(host);
    return res;
}

ddpm_result vk_unet_create(vk_context *ctx, const vk_unet_desc *d, vk_unet **out)
{
    ddpm_result res = DDPM_OK;
    *out = NULL;
    const ddpm_graph *g = d->graph;
    if (d->fp16 && !ctx->limits.storage16)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "vulkan: %s has no 16-bit storage (use --precision fp32)",
                         ctx->name);
    vk_unet *u = ddpm_calloc(1, sizeof *u);
    if (!u)
        return DDPM_ERR_NOMEM;
    u->ctx = ctx;
    u->g = g;
    u->chunk = d->chunk;
    u->fp16 = d->fp16;
    u->elem = d->fp16 ? 2 : 4;
    u->group = d->group;
    u->conv_reg = d->conv == VK_CONV_REG ||
                  (d->conv == VK_CONV_AUTO && ctx->info.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU);
    int64_t arena_elems[VK_MAX_WEIGHT_ARENAS];
    u->param_arena = ddpm_calloc((size_t)g->n_params, sizeof *u->param_arena);
    u->param_off = ddpm_calloc((size_t)g->n_params, sizeof *u->param_off);
    u->node_set = ddpm_calloc((size_t)g->n_nodes, sizeof *u->node_set);
    if (!u->param_arena || !u->param_off || !u->node_set) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    u->n_warena = vk_plan_weights(g, u->elem, ctx->limits.max_storage_range, u->param_arena, u->param_off,
                                  arena_elems, VK_MAX_WEIGHT_ARENAS);
    if (u->n_warena < 0 || u->n_warena > VK_MAX_WEIGHT_ARENAS) {
        res = ddpm_fail(DDPM_ERR_UNSUPPORTED,
                        "vulkan: the weights do not fit %d buffers of the device's range of %u bytes",
                        VK_MAX_WEIGHT_ARENAS, ctx->limits.max_storage_range);
        goto cleanup;
    }
    uint64_t range = ctx->limits.max_storage_range;
    if (d->act_range && d->act_range < range)
        range = d->act_range;
    TRY(vk_plan_make(g, d->chunk, d->keep_all, (int64_t)(range / (uint64_t)u->elem), &u->plan));
    if (u->plan.n_bufs > VK_MAX_ACT_BUFFERS) {
        res = ddpm_fail(DDPM_ERR_UNSUPPORTED,
                        "vulkan: the activations of %d image%s need %d buffers of %llu bytes (at most %d)",
                        d->chunk, d->chunk == 1 ? "" : "s", u->plan.n_bufs, (unsigned long long)range,
                        VK_MAX_ACT_BUFFERS);
        goto cleanup;
    }
    for (int b = 0; b < u->plan.n_bufs; b++) {
        char name[32];
        snprintf(name, sizeof name, "activations%d", b);
        uint64_t bytes = (uint64_t)u->plan.buf_elems[b] * (uint64_t)u->elem;
        TRY(vk_buffer_create(ctx, bytes ? bytes : 4, VK_MEM_DEVICE, name, &u->abuf[b]));
    }
    TRY(upload_weights(u, d->weights, arena_elems));
    TRY(create_programs(u));
    TRY(bind_programs(u, d));
    *out = u;
cleanup:
    if (res != DDPM_OK)
        vk_unet_destroy(u);
    return res;
}

void vk_unet_destroy(vk_unet *u)
{
    if (!u)
        return;
    vk_context *ctx = u->ctx;
    if (ctx->device)
        vkDeviceWaitIdle(ctx->device);
    vk_program_destroy(ctx, &u->conv);
    vk_program_destroy(ctx, &u->conv_narrow);
    vk_program_destroy(ctx, &u->groupnorm);
    vk_program_destroy(ctx, &u->time_embed);
    vk_program_destroy(ctx, &u->eltwise);
    for (int k = 0; k < u->n_attn; k++)
        vk_program_destroy(ctx, &u->attn[k].prog);
    for (int a = 0; a < VK_MAX_WEIGHT_ARENAS; a++)
        vk_buffer_destroy(ctx, &u->warena[a]);
    for (int b = 0; b < VK_MAX_ACT_BUFFERS; b++)
        vk_buffer_destroy(ctx, &u->abuf[b]);
    vk_plan_free(&u->plan);
    free(u->node_set);
    free(u->param_arena);
    free(u->param_off);
    free(u->pend_w);
    free(u->pend_r);
    free(u);
}

void vk_unet_counts(const vk_unet *u, uint32_t *dispatches, uint32_t *barriers)
{
    *dispatches = u->n_dispatches;
    *barriers = u->n_barriers;
}

void vk_unet_memory(const vk_unet *u, uint64_t *weights, uint64_t *arena)
{
    uint64_t w = 0;
    for (int a = 0; a < u->n_warena; a++)
        w += u->warena[a].size;
    *weights = w;
    uint64_t a = 0;
    for (int b = 0; b < u->plan.n_bufs; b++)
        a += u->abuf[b].size;
    *arena = a;
}

int vk_unet_act_buffers(const vk_unet *u, uint64_t *largest)
{
    uint64_t l = 0;
    for (int b = 0; b < u->plan.n_bufs; b++)
        if (u->abuf[b].size > l)
            l = u->abuf[b].size;
    *largest = l;
    return u->plan.n_bufs;
}

/* ---- recording ---------------------------------------------------------------------------------- */

/* The range of value v's storage (its root's whole region: conservative for concat slices), its
 * buffer in the bits above 40. */
static void value_range(const vk_unet *u, int v, int64_t r[2])
{
    int root = u->plan.root[v];
    r[0] = ((int64_t)u->plan.buf[root] << 40) + u->plan.off[root];
    r[1] = r[0] + (int64_t)u->plan.batch * u->plan.bs[root];
}

static int overlaps(const int64_t (*list)[2], int n, const int64_t r[2])
{
    for (int i = 0; i < n; i++)
        if (list[i][0] < r[1] && r[0] < list[i][1])
            return 1;
    return 0;
}

/* Before a dispatch reading `reads` and writing `writes` (value ids, -1 unused): a barrier when it
 * reads what an unsynchronised dispatch wrote, or writes what one read or wrote. */
static ddpm_result hazard(vk_unet *u, VkCommandBuffer cmd, const int *reads, int n_reads, int write)
{
    int64_t rr[3][2] = {{0}}, wr[2] = {0};
    int need = 0;
    for (int k = 0; k < n_reads; k++)
        if (reads[k] >= 0) {
            value_range(u, reads[k], rr[k]);
            need |= overlaps((const int64_t(*)[2])u->pend_w, u->n_pend_w, rr[k]);
        }
    if (write >= 0) {
        value_range(u, write, wr);
        need |= overlaps((const int64_t(*)[2])u->pend_w, u->n_pend_w, wr);
        need |= overlaps((const int64_t(*)[2])u->pend_r, u->n_pend_r, wr);
    }
    if (need) {
        vk_barrier_compute(cmd);
        u->n_pend_w = u->n_pend_r = 0;
        u->n_barriers++;
    }
    u->n_dispatches++;
    int cap_need = (u->n_pend_r > u->n_pend_w ? u->n_pend_r : u->n_pend_w) + 4;
    if (cap_need > u->cap_pend) {
        int cap = u->cap_pend ? u->cap_pend * 2 : 64;
        while (cap < cap_need)
            cap *= 2;
        void *pw = realloc(u->pend_w, (size_t)cap * sizeof *u->pend_w);
        if (pw)
            u->pend_w = pw;
        void *pr = realloc(u->pend_r, (size_t)cap * sizeof *u->pend_r);
        if (pr)
            u->pend_r = pr;
        if (!pw || !pr)
            return ddpm_fail(DDPM_ERR_NOMEM, "vulkan: out of memory while recording");
        u->cap_pend = cap;
    }
    for (int k = 0; k < n_reads; k++)
        if (reads[k] >= 0) {
            u->pend_r[u->n_pend_r][0] = rr[k][0];
            u->pend_r[u->n_pend_r++][1] = rr[k][1];
        }
    if (write >= 0) {
        u->pend_w[u->n_pend_w][0] = wr[0];
        u->pend_w[u->n_pend_w++][1] = wr[1];
    }
    return DDPM_OK;
}

static uint32_t off32(const vk_unet *u, int v)
{
    return (uint32_t)u->plan.off[v];
}

static uint32_t bs32(const vk_unet *u, int v)
{
    return (uint32_t)u->plan.bs[v];
}

static uint32_t ceil_div(uint64_t a, uint64_t b)
{
    return (uint32_t)((a + b - 1) / b);
}

/* Threads for eltwise.comp's grid-stride loop over n elements: at most the device's group count. */
static uint32_t eltwise_threads(const vk_unet *u, uint32_t n)
{
    uint64_t cap = (uint64_t)u->ctx->limits.max_group_count[0] * u->eltwise.local_size[0];
    return n < cap ? n : (uint32_t)cap;
}

static ddpm_result record_node(vk_unet *u, VkCommandBuffer cmd, int i, int n_img)
{
    ddpm_result res = DDPM_OK;
    const ddpm_graph *g = u->g;
    const ddpm_node *n = &g->nodes[i];
    const ddpm_value *o = &g->values[n->out];
    const ddpm_value *a = &g->values[n->in[0]];
    uint32_t set = (uint32_t)u->node_set[i];
    uint32_t nb = (uint32_t)n_img;
    switch (n->op) {
    case OP_TIME_EMBED: {
        TRY(hazard(u, cmd, NULL, 0, n->out));
        vk_time_embed_push p = {off32(u, n->out),   bs32(u, n->out), (uint32_t)o->c, nb,
                                (uint32_t)n->ip[0], n->fp[0]};
        TRY(vk_program_dispatch(u->ctx, cmd, &u->time_embed, set, &p, sizeof p, (uint32_t)o->c, nb, 1));
        break;
    }
    case OP_LINEAR:
    case OP_CONV2D: {
        int reads[3] = {n->in[0], n->in[1], n->in[2]};
        if (n->op == OP_LINEAR)
            reads[1] = reads[2] = -1;
        TRY(hazard(u, cmd, reads, 3, n->out));
        vk_conv_push p = {0};
        p.in_off = off32(u, n->in[0]);
        p.in_bs = bs32(u, n->in[0]);
        p.out_off = off32(u, n->out);
        p.out_bs = bs32(u, n->out);
        p.w_off = (uint32_t)u->param_off[n->w[0]];
        p.b_off = (uint32_t)u->param_off[n->w[1]];
        p.scale = 1.0f;
        if (n->op == OP_LINEAR) {
            p.ci = (uint32_t)a->c;
            p.h = p.w = p.ho = p.wo = p.k = p.stride = 1;
            p.co = (uint32_t)o->c;
        } else {
            p.ci = (uint32_t)a->c;
            p.h = (uint32_t)a->h;
            p.w = (uint32_t)a->w;
            p.co = (uint32_t)o->c;
            p.ho = (uint32_t)o->h;
            p.wo = (uint32_t)o->w;
            p.k = (uint32_t)n->ip[0];
            p.stride = (uint32_t)n->ip[1];
            p.pad_t = (uint32_t)n->ip[2];
            p.pad_l = (uint32_t)n->ip[3];
            p.scale = n->fp[0];
            if (n->in[1] >= 0) {
                p.flags |= VK_CONV_TEMB;
                p.temb_off = off32(u, n->in[1]);
                p.temb_bs = bs32(u, n->in[1]);
            }
            if (n->in[2] >= 0) {
                p.flags |= VK_CONV_RES;
                p.res_off = off32(u, n->in[2]);
                p.res_bs = bs32(u, n->in[2]);
            }
        }
        p.n_total = nb * p.ho * p.wo;
        const vk_program *prog = &u->conv;
        uint32_t tn = u->conv_tn;
        if (u->conv_narrow.pipeline && p.n_total * 2 <= u->conv_tn) { /* most of a wide tile would idle */
            prog = &u->conv_narrow;
            tn = VK_CONV_REG_RP * u->conv_narrow.local_size[0];
        }
        uint32_t gx = ceil_div(p.n_total, tn), gy = ceil_div(p.co, u->conv_tm);
        TRY(vk_program_dispatch(u->ctx, cmd, prog, set, &p, sizeof p, gx * prog->local_size[0],
                                gy * prog->local_size[1], 1));
        break;
    }
    case OP_SILU:
    case OP_UPSAMPLE: {
        int reads[1] = {n->in[0]};
        TRY(hazard(u, cmd, reads, 1, n->out));
        vk_eltwise_push p = {n->op == OP_SILU ? VK_ELTWISE_SILU : VK_ELTWISE_UPSAMPLE,
                             (uint32_t)value_numel(o),
                             nb,
                             off32(u, n->in[0]),
                             bs32(u, n->in[0]),
                             off32(u, n->out),
                             bs32(u, n->out),
                             (uint32_t)a->h,
                             (uint32_t)a->w};
        TRY(vk_program_dispatch(u->ctx, cmd, &u->eltwise, set, &p, sizeof p, eltwise_threads(u, p.n), nb, 1));
        break;
    }
    case OP_GROUPNORM: {
        int reads[1] = {n->in[0]};
        TRY(hazard(u, cmd, reads, 1, n->out));
        vk_groupnorm_push p = {off32(u, n->in[0]),
                               bs32(u, n->in[0]),
                               off32(u, n->out),
                               bs32(u, n->out),
                               (uint32_t)u->param_off[n->w[0]],
                               (uint32_t)u->param_off[n->w[1]],
                               (uint32_t)a->c,
                               (uint32_t)(a->h * a->w),
                               (uint32_t)n->ip[0],
                               (uint32_t)n->ip[1],
                               n->fp[0]};
        TRY(vk_program_dispatch(u->ctx, cmd, &u->groupnorm, set, &p, sizeof p,
                                (uint32_t)n->ip[0] * u->groupnorm.local_size[0], nb, 1));
        break;
    }
    case OP_ATTENTION: {
        int reads[3] = {n->in[0], n->in[1], n->in[2]};
        TRY(hazard(u, cmd, reads, 3, n->out));
        uint32_t heads = (uint32_t)n->ip[0], d = (uint32_t)a->c / heads, hw = (uint32_t)(a->h * a->w);
        const vk_program *prog = NULL;
        for (int k = 0; k < u->n_attn; k++)
            if (u->attn[k].d == d)
                prog = &u->attn[k].prog;
        if (!prog)
            return ddpm_fail(DDPM_ERR_ARG, "vulkan: no attention program for head size %u", d);
        vk_attention_push p = {off32(u, n->in[0]),    bs32(u, n->in[0]),  off32(u, n->in[1]),
                               bs32(u, n->in[1]),     off32(u, n->in[2]), bs32(u, n->in[2]),
                               off32(u, n->out),      bs32(u, n->out),    hw,
                               1.0f / sqrtf((float)d)};
        TRY(vk_program_dispatch(u->ctx, cmd, prog, set, &p, sizeof p, ceil_div(hw, 4) * prog->local_size[0],
                                heads, nb));
        break;
    }
    case OP_CONCAT: break; /* its inputs were written in place */
    case OP_COUNT: break;
    }
cleanup:
    return res;
}

ddpm_result vk_unet_record_node(vk_unet *u, VkCommandBuffer cmd, int node, int n)
{
    if (node < 0 || node >= u->g->n_nodes || n < 1 || n > u->chunk)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan: node %d, %d images", node, n);
    u->n_pend_w = u->n_pend_r = 0;
    return record_node(u, cmd, node, n);
}

ddpm_result vk_unet_record(vk_unet *u, VkCommandBuffer cmd, int first, int n)
{
    ddpm_result res = DDPM_OK;
    const ddpm_graph *g = u->g;
    if (n < 1 || n > u->chunk || first < 0)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan: U-Net of %d images (planned for %d)", n, u->chunk);
    vk_barrier_compute(cmd);
    u->n_pend_w = u->n_pend_r = 0;
    u->n_dispatches = u->n_barriers = 0;
    uint32_t nb = (uint32_t)n;
    /* x (float32) into the arena */
    int64_t per_in = value_numel(&g->values[g->input]);
    TRY(hazard(u, cmd, NULL, 0, g->input));
    vk_eltwise_push pin = {VK_ELTWISE_CAST_IN,
                           (uint32_t)per_in,
                           nb,
                           (uint32_t)(first * per_in),
                           (uint32_t)per_in,
                           off32(u, g->input),
                           bs32(u, g->input),
                           0,
                           0};
    TRY(vk_program_dispatch(u->ctx, cmd, &u->eltwise, 0, &pin, sizeof pin, eltwise_threads(u, pin.n), nb, 1));
    for (int i = 0; i < g->n_nodes; i++)
        TRY(record_node(u, cmd, i, n));
    int64_t per_out = value_numel(&g->values[g->output]);
    int reads[1] = {g->output};
    TRY(hazard(u, cmd, reads, 1, -1));
    vk_eltwise_push pout = {VK_ELTWISE_CAST_OUT,
                            (uint32_t)per_out,
                            nb,
                            off32(u, g->output),
                            bs32(u, g->output),
                            (uint32_t)(first * per_out),
                            (uint32_t)per_out,
                            0,
                            0};
    TRY(vk_program_dispatch(u->ctx, cmd, &u->eltwise, 1, &pout, sizeof pout, eltwise_threads(u, pout.n), nb,
                            1));
    vk_barrier_compute(cmd);
cleanup:
    return res;
}

ddpm_result vk_unet_download(vk_unet *u, int v, int n, float *host)
{
    ddpm_result res = DDPM_OK;
    if (v < 0 || v >= u->g->n_values || u->plan.off[v] < 0 || n < 1 || n > u->chunk)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan: value %d is not stored", v);
    int64_t numel = value_numel(&u->g->values[v]);
    void *tmp = NULL;
    for (int b = 0; b < n; b++) {
        size_t off = (size_t)(u->plan.off[v] + (int64_t)b * u->plan.bs[v]) * (size_t)u->elem;
        if (!u->fp16) {
            TRY(vk_buffer_download(u->ctx, act_buf(u, v), off, host + (size_t)b * numel, (size_t)numel * 4));
            continue;
        }
        if (!tmp && !(tmp = ddpm_calloc((size_t)numel, 2))) {
            res = DDPM_ERR_NOMEM;
            goto cleanup;
        }
        TRY(vk_buffer_download(u->ctx, act_buf(u, v), off, tmp, (size_t)numel * 2));
        for (int64_t e = 0; e < numel; e++)
            host[(size_t)b * numel + e] = st_half_to_float(((uint16_t *)tmp)[e]);
    }
cleanup:
    free(tmp);
    return res;
}
