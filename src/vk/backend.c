/* backend.c: the Vulkan sampling backend: x, the model output and the coefficient table live on the
 * GPU; x_T comes from noise.comp; each step (every U-Net node + the update) replays one command buffer
 * recorded at creation. */
#include "vk_internal.h"

#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per step, the host writes the plan row index into `step_index` (a host-visible uint) and submits
 * `step_cmd`, recorded once: the U-Net nodes and the update read their per-step
 * scalars from the coefficient table at that row (the time embedding reads t there too). A push constant
 * would have to be re-recorded, and one command buffer per step would multiply the recording (and, with the
 * U-Net, the descriptor work) by the number of steps; one uint written through a mapped pointer costs
 * nothing. */
typedef struct vk_backend {
    backend base;
    vk_context ctx;
    const ddpm_model *model;
    const sampler_plan *plan;
    int n_images;
    int first_image;
    uint64_t seed;
    int64_t per_image;    /* in_channels * S * S (= out_channels * S * S) */
    vk_buffer x;          /* (n, C, H, W): the state, never leaves the GPU except for the CPU U-Net */
    vk_buffer model_out;  /* (n, C, H, W) */
    vk_buffer coef;       /* (n_steps, DDPM_COEF_STRIDE) */
    vk_buffer step_index; /* one uint, host-visible */
    vk_program noise;
    vk_program update;
    vk_unet *unet;
    int chunk; /* images per U-Net evaluation */
    int fp16;
    VkCommandBuffer step_cmd;
    int started;
} vk_backend;

static ddpm_result vk_start(backend *b, const float *init);
static ddpm_result vk_step(backend *b, int i);
static ddpm_result vk_finish(backend *b, float *out);
static void vk_destroy(backend *b);

static void seed_words(uint64_t seed, uint32_t *lo, uint32_t *hi)
{
    *lo = (uint32_t)seed;
    *hi = (uint32_t)(seed >> 32);
}

/* The update of the current row, in place on x; the U-Net must have written model_out. */
static ddpm_result record_update(vk_backend *vb, VkCommandBuffer cmd)
{
    vk_update_push push = {(uint32_t)vb->per_image, (uint32_t)vb->n_images, (uint32_t)vb->first_image, 0, 0};
    seed_words(vb->seed, &push.seed_lo, &push.seed_hi);
    uint32_t blocks = (uint32_t)((vb->per_image + 3) / 4);
    return vk_program_dispatch(&vb->ctx, cmd, &vb->update, 0, &push, sizeof push, blocks,
                               (uint32_t)vb->n_images, 1);
}

/* Records the whole timestep once: the U-Net over every chunk of images (reading x and the timestep
 * of the current row, writing model_out), then the update, then a barrier making x visible to
 * downloads. */
static ddpm_result record_step(vk_backend *vb)
{
    ddpm_result res = DDPM_OK;
    VkCommandBuffer cmd = vb->step_cmd;
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VK_TRY(vkBeginCommandBuffer(cmd, &bi));
    vk_barrier_to_compute(cmd);
    for (int first = 0; first < vb->n_images; first += vb->chunk) {
        int n = vb->n_images - first < vb->chunk ? vb->n_images - first : vb->chunk;
        TRY(vk_unet_record(vb->unet, cmd, first, n));
    }
    TRY(record_update(vb, cmd));
    vk_barrier_from_compute(cmd);
    VK_TRY(vkEndCommandBuffer(cmd));
cleanup:
    return res;
}

/* The largest device-local heap (bytes): the budget a batch must fit. */
static uint64_t device_budget(const vk_context *ctx)
{
    uint64_t best = 0;
    const VkPhysicalDeviceMemoryProperties *m = &ctx->info.mem;
    for (uint32_t i = 0; i < m->memoryHeapCount; i++)
        if ((m->memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && m->memoryHeaps[i].size > best)
            best = m->memoryHeaps[i].size;
    return best;
}

/* fp16 storage: asked for (the device must have 16-bit storage), or by default on GPUs that have it.
 * CPU devices (lavapipe) default to fp32: their "16-bit storage" saves no bandwidth worth the
 * conversions, and fp32 keeps their images bit-close to the CPU backend. */
static ddpm_result pick_precision(const vk_context *ctx, int precision, int *fp16)
{
    if (precision != 0 && precision != 16 && precision != 32)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: precision %d (0, 16 or 32)", precision);
    if (precision == 16 && !ctx->limits.storage16)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s has no 16-bit storage: fp16 is not available", ctx->name);
    *fp16 = precision == 16 || (precision == 0 && ctx->limits.storage16 &&
                                ctx->info.props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU);
    return DDPM_OK;
}

ddpm_result vk_backend_create(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                              const char *spec, backend **out)
{
    ddpm_result res = DDPM_OK;
    *out = NULL;
    if (!m || !p || !o || p->n_steps < 1 || !p->coef || !p->timesteps)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: missing model or plan");
    int64_t per_image = 0, coef_n = 0;
    res = sampler_check_batch(m, o, &per_image);
    if (res != DDPM_OK)
        return res;
    int64_t total = per_image * o->n;      /* <= 2^32: checked */
    if (total > (int64_t)(UINT32_MAX / 4)) /* the state is one storage buffer */
        return ddpm_fail(DDPM_ERR_NOMEM, "vulkan backend: %d images of %lld elements are too many", o->n,
                         (long long)per_image);
    if (!ddpm_mul_ok(p->n_steps, DDPM_COEF_STRIDE, &coef_n))
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: bad plan");

    vk_backend *vb = ddpm_calloc(1, sizeof *vb);
    if (!vb)
        return DDPM_ERR_NOMEM;
    vb->base.start = vk_start;
    vb->base.step = vk_step;
    vb->base.finish = vk_finish;
    vb->base.destroy = vk_destroy;
    vb->model = m;
    vb->plan = p;
    vb->n_images = o->n;
    vb->first_image = o->first_index;
    vb->seed = o->seed;
    vb->per_image = per_image;

    double t0 = vk_now_ms();
    TRY(vk_context_create(spec, &vb->ctx));
    vb->base.name = vb->ctx.name;
    vk_context *ctx = &vb->ctx;
    if (o->baseline_limits)
        vk_context_clamp_baseline(ctx);
    TRY(pick_precision(ctx, o->precision, &vb->fp16));

    /* Memory first: a batch that does not fit fails here, before any upload or work. */
    const ddpm_graph *g = &m->graph;
    vk_mem_estimate est;
    int elem = vb->fp16 ? 2 : 4;
    uint64_t range = ctx->limits.max_storage_range, budget = device_budget(ctx);
    TRY(vk_plan_memory(g, o->n, elem, range, p->n_steps, &est));
    if (est.chunk == 0) {
        res = ddpm_fail(
            DDPM_ERR_UNSUPPORTED,
            "vulkan: one image needs %.1f MiB of activations, and one of its tensors (with the values "
            "read beside it) is above %s's storage buffer range of %.1f MiB%s",
            (double)est.activations / 1048576.0, ctx->name, (double)range / 1048576.0,
            vb->fp16 ? "" : " (try --precision fp16)");
        goto cleanup;
    }
    if (est.total > budget || (uint64_t)total * sizeof(float) > range) {
        int fit = vk_plan_max_batch(g, o->n, elem, range, p->n_steps, budget);
        res = ddpm_fail(DDPM_ERR_NOMEM,
                        "vulkan: %d images need %.1f MiB of device memory (%s has %.1f MiB, storage buffer "
                        "range %.1f MiB); the largest batch that fits is %d",
                        o->n, (double)est.total / 1048576.0, ctx->name, (double)budget / 1048576.0,
                        (double)range / 1048576.0, fit);
        goto cleanup;
    }
    vb->chunk = est.chunk;

    size_t bytes = (size_t)total * sizeof(float);
    TRY(vk_buffer_create(ctx, bytes, VK_MEM_DEVICE, "x", &vb->x));
    TRY(vk_buffer_create(ctx, bytes, VK_MEM_DEVICE, "model_out", &vb->model_out));
    TRY(vk_buffer_create(ctx, (size_t)coef_n * sizeof(float), VK_MEM_DEVICE, "coef", &vb->coef));
    TRY(vk_buffer_create(ctx, sizeof(uint32_t), VK_MEM_HOST, "step_index", &vb->step_index));
    TRY(vk_buffer_upload(ctx, &vb->coef, 0, p->coef, (size_t)coef_n * sizeof(float)));

    vk_unet_desc ud = {.graph = g,
                       .weights = (const float *const *)m->weights,
                       .chunk = vb->chunk,
                       .fp16 = vb->fp16,
                       .x = &vb->x,
                       .out = &vb->model_out,
                       .coef = &vb->coef,
                       .step = &vb->step_index};
    TRY(vk_unet_create(ctx, &ud, &vb->unet));

    vk_program_desc nd = {.shader = VK_SHADER_noise, .n_buffers = 1, .push_size = sizeof(vk_noise_push)};
    TRY(vk_program_create(ctx, &nd, &vb->noise));
    const vk_buffer *noise_bufs[] = {&vb->x};
    TRY(vk_program_bind(ctx, &vb->noise, 0, noise_bufs));
    vk_program_desc upd = {.shader = VK_SHADER_update, .n_buffers = 4, .push_size = sizeof(vk_update_push)};
    TRY(vk_program_create(ctx, &upd, &vb->update));
    const vk_buffer *update_bufs[] = {&vb->x, &vb->model_out, &vb->coef, &vb->step_index};
    TRY(vk_program_bind(ctx, &vb->update, 0, update_bufs));

    TRY(vk_cmd_alloc(ctx, &vb->step_cmd));
    vk_set_name(ctx, VK_OBJECT_TYPE_COMMAND_BUFFER, (uint64_t)(uintptr_t)vb->step_cmd, "step");
    TRY(record_step(vb));
    vk_context_save_cache(ctx);

    if (o->log) {
        char msg[1600];
        snprintf(msg, sizeof msg,
                 "vulkan: %s (%s), %s storage%s, %d image%s per U-Net pass, %.1f MiB of device memory "
                 "(weights %.1f, activations %.1f)",
                 ctx->name, ctx->info.driver_name[0] ? ctx->info.driver_name : "unknown driver",
                 vb->fp16 ? "fp16" : "fp32", o->baseline_limits ? ", baseline limits" : "", vb->chunk,
                 vb->chunk == 1 ? "" : "s", (double)est.total / 1048576.0, (double)est.weights / 1048576.0,
                 (double)est.activations / 1048576.0);
        o->log(o->user, msg);
    }
    if (o->log && o->verbose) {
        char msg[1600];
        uint32_t nd = 0, nbar = 0;
        vk_unet_counts(vb->unet, &nd, &nbar);
        snprintf(msg, sizeof msg,
                 "vulkan: a U-Net pass is %u dispatches for %d nodes with %u barriers (only where a node "
                 "reads or overwrites what an unsynchronised one wrote or read)",
                 nd, m->graph.n_nodes, nbar);
        o->log(o->user, msg);
        snprintf(msg, sizeof msg,
                 "vulkan: %u pipelines in %.1f ms (%u from the pipeline cache, %zu bytes loaded%s%s), set-up "
                 "%.1f ms",
                 ctx->pipelines_created, ctx->pipeline_ms, ctx->pipelines_cached, ctx->cache_loaded,
                 ctx->cache_path[0] ? " from " : ", no cache directory", ctx->cache_path, vk_now_ms() - t0);
        o->log(o->user, msg);
    }
    *out = &vb->base;
cleanup:
    if (res != DDPM_OK)
        vk_destroy(&vb->base);
    return res;
}

static ddpm_result vk_start(backend *b, const float *init)
{
    ddpm_result res = DDPM_OK;
    vk_backend *vb = (vk_backend *)b;
    if (init) {
        TRY(vk_buffer_upload(&vb->ctx, &vb->x, 0, init, vb->x.size));
    } else {
        vk_noise_push push = {(uint32_t)vb->per_image,
                              (uint32_t)vb->n_images,
                              (uint32_t)vb->first_image,
                              DDPM_NOISE_STEP_INIT,
                              0,
                              0,
                              VK_NOISE_NORMAL,
                              0,
                              0};
        seed_words(vb->seed, &push.seed_lo, &push.seed_hi);
        VkCommandBuffer cmd = VK_NULL_HANDLE;
        TRY(vk_oneshot_begin(&vb->ctx, &cmd));
        vk_barrier_to_compute(cmd); /* a previous run may still be reading x */
        TRY(vk_program_dispatch(&vb->ctx, cmd, &vb->noise, 0, &push, sizeof push,
                                (uint32_t)((vb->per_image + 3) / 4), (uint32_t)vb->n_images, 1));
        vk_barrier_from_compute(cmd);
        TRY(vk_oneshot_end(&vb->ctx));
    }
    vb->started = 1;
cleanup:
    return res;
}

static ddpm_result vk_step(backend *b, int i)
{
    ddpm_result res = DDPM_OK;
    vk_backend *vb = (vk_backend *)b;
    if (!vb->started)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: step before start");
    if (i < 0 || i >= vb->plan->n_steps)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: step %d of %d", i, vb->plan->n_steps);
    uint32_t row = (uint32_t)i;
    memcpy(vb->step_index.mapped, &row, sizeof row);
    TRY(vk_submit_wait(&vb->ctx, vb->step_cmd));
cleanup:
    return res;
}

static ddpm_result vk_finish(backend *b, float *out)
{
    vk_backend *vb = (vk_backend *)b;
    if (!vb->started)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: finish before start");
    return vk_buffer_download(&vb->ctx, &vb->x, 0, out, vb->x.size);
}

static void vk_destroy(backend *b)
{
    if (!b)
        return;
    vk_backend *vb = (vk_backend *)b;
    vk_context *ctx = &vb->ctx;
    if (ctx->device) {
        vkDeviceWaitIdle(ctx->device);
        if (vb->step_cmd)
            vkFreeCommandBuffers(ctx->device, ctx->pool, 1, &vb->step_cmd);
        vk_unet_destroy(vb->unet);
        vk_program_destroy(ctx, &vb->update);
        vk_program_destroy(ctx, &vb->noise);
        vk_buffer_destroy(ctx, &vb->step_index);
        vk_buffer_destroy(ctx, &vb->coef);
        vk_buffer_destroy(ctx, &vb->model_out);
        vk_buffer_destroy(ctx, &vb->x);
    }
    vk_context_destroy(ctx);
    free(vb);
}
