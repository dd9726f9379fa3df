/* backend.c: the Vulkan sampling backend: x, the model output and the coefficient table live on the
 * GPU; x_T comes from noise.comp; each step replays one command buffer recorded at creation. */
#include "vk_internal.h"

#include "cpu/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VK_CPU_UNET_CHUNK 16 /* images per CPU U-Net call, as the CPU backend */

/* Per step, the host writes the plan row index into `step_index` (a host-visible uint) and submits
 * `step_cmd`, recorded once: the update (and, in the next issue, the U-Net nodes) read their per-step
 * scalars from the coefficient table at that row. A push constant would have to be re-recorded, and
 * one command buffer per step would multiply the recording (and, with the U-Net, the descriptor
 * work) by the number of steps; one uint written through a mapped pointer costs nothing. */
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
    VkCommandBuffer step_cmd;
    int started;
    /* The U-Net on the CPU (until the Vulkan U-Net lands): host copies of x, t and the output. */
    float *host_x, *host_t, *host_out;
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

/* Records the whole timestep once: barrier for the host/transfer writes of model_out, then the
 * update, then a barrier making x visible to downloads. GPU U-Net nodes will be recorded before the
 * update, reading x and the timestep (row DDPM_COEF_T) and writing model_out. */
static ddpm_result record_step(vk_backend *vb)
{
    ddpm_result res = DDPM_OK;
    VkCommandBuffer cmd = vb->step_cmd;
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VK_TRY(vkBeginCommandBuffer(cmd, &bi));
    vk_barrier_to_compute(cmd);
    TRY(record_update(vb, cmd));
    vk_barrier_from_compute(cmd);
    VK_TRY(vkEndCommandBuffer(cmd));
cleanup:
    return res;
}

ddpm_result vk_backend_create(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                              const char *spec, backend **out)
{
    ddpm_result res = DDPM_OK;
    *out = NULL;
    if (!m || !p || !o || p->n_steps < 1 || !p->coef || !p->timesteps)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: missing model or plan");
    if (o->n < 1 || o->first_index < 0)
        return ddpm_fail(DDPM_ERR_ARG, "vulkan backend: bad image count %d or first index %d", o->n,
                         o->first_index);
    const ddpm_unet_config *c = &m->config;
    if (c->out_channels != c->in_channels)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                         "vulkan backend: %d output channels for %d input channels (learned variance is not "
                         "supported)",
                         c->out_channels, c->in_channels);
    int64_t per_image = (int64_t)c->in_channels * c->sample_size * c->sample_size, total = 0, coef_n = 0;
    if (!ddpm_mul_ok(per_image, o->n, &total) || total > (int64_t)(UINT32_MAX / 4) ||
        (int64_t)o->first_index + o->n > (int64_t)UINT32_MAX + 1)
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

    TRY(vk_context_create(spec, &vb->ctx));
    vb->base.name = vb->ctx.name;
    vk_context *ctx = &vb->ctx;
    size_t bytes = (size_t)total * sizeof(float);
    TRY(vk_buffer_create(ctx, bytes, VK_MEM_DEVICE, "x", &vb->x));
    TRY(vk_buffer_create(ctx, bytes, VK_MEM_DEVICE, "model_out", &vb->model_out));
    TRY(vk_buffer_create(ctx, (size_t)coef_n * sizeof(float), VK_MEM_DEVICE, "coef", &vb->coef));
    TRY(vk_buffer_create(ctx, sizeof(uint32_t), VK_MEM_HOST, "step_index", &vb->step_index));
    TRY(vk_buffer_upload(ctx, &vb->coef, 0, p->coef, (size_t)coef_n * sizeof(float)));

    vk_program_desc nd = {.shader = VK_SHADER_noise, .n_buffers = 1, .push_size = sizeof(vk_noise_push)};
    TRY(vk_program_create(ctx, &nd, &vb->noise));
    const vk_buffer *noise_bufs[] = {&vb->x};
    TRY(vk_program_bind(ctx, &vb->noise, 0, noise_bufs));
    vk_program_desc ud = {.shader = VK_SHADER_update, .n_buffers = 4, .push_size = sizeof(vk_update_push)};
    TRY(vk_program_create(ctx, &ud, &vb->update));
    const vk_buffer *update_bufs[] = {&vb->x, &vb->model_out, &vb->coef, &vb->step_index};
    TRY(vk_program_bind(ctx, &vb->update, 0, update_bufs));

    TRY(vk_cmd_alloc(ctx, &vb->step_cmd));
    vk_set_name(ctx, VK_OBJECT_TYPE_COMMAND_BUFFER, (uint64_t)(uintptr_t)vb->step_cmd, "step");
    TRY(record_step(vb));

    vb->host_x = ddpm_calloc((size_t)total, sizeof(float));
    vb->host_out = ddpm_calloc((size_t)total, sizeof(float));
    vb->host_t = ddpm_calloc((size_t)o->n, sizeof(float));
    if (!vb->host_x || !vb->host_out || !vb->host_t) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    if (o->log) {
        char msg[384];
        snprintf(msg, sizeof msg,
                 "vulkan: %s (%s); the U-Net runs on the CPU for now, noise and the update on the GPU",
                 ctx->name, ctx->info.driver_name[0] ? ctx->info.driver_name : "unknown driver");
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

/* The U-Net on the CPU: x down, model_out up. */
static ddpm_result unet_cpu(vk_backend *vb, int i)
{
    ddpm_result res = DDPM_OK;
    size_t bytes = (size_t)vb->x.size;
    TRY(vk_buffer_download(&vb->ctx, &vb->x, 0, vb->host_x, bytes));
    for (int k = 0; k < vb->n_images; k++)
        vb->host_t[k] = (float)vb->plan->timesteps[i];
    /* In chunks of images: the activations of one call scale with its batch. */
    for (int k0 = 0; k0 < vb->n_images; k0 += VK_CPU_UNET_CHUNK) {
        int batch = vb->n_images - k0 < VK_CPU_UNET_CHUNK ? vb->n_images - k0 : VK_CPU_UNET_CHUNK;
        size_t off = (size_t)k0 * (size_t)vb->per_image;
        TRY(cpu_unet_forward(&vb->model->graph, (const float *const *)vb->model->weights, batch,
                             vb->host_x + off, vb->host_t, vb->host_out + off));
    }
    TRY(vk_buffer_upload(&vb->ctx, &vb->model_out, 0, vb->host_out, bytes));
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
    TRY(unet_cpu(vb, i));
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
        vk_program_destroy(ctx, &vb->update);
        vk_program_destroy(ctx, &vb->noise);
        vk_buffer_destroy(ctx, &vb->step_index);
        vk_buffer_destroy(ctx, &vb->coef);
        vk_buffer_destroy(ctx, &vb->model_out);
        vk_buffer_destroy(ctx, &vb->x);
    }
    vk_context_destroy(ctx);
    free(vb->host_x);
    free(vb->host_out);
    free(vb->host_t);
    free(vb);
}
