/* vk_internal.h: the Vulkan backend's building blocks: context (instance, device, queue, limits),
 * buffers, compute programs, one-shot submission and the embedded shader table. */
#ifndef DDPM_VK_INTERNAL_H
#define DDPM_VK_INTERNAL_H

#include "common.h"
#include "shared.h"
#include "vk.h"

#include <time.h>
#include <volk.h>

/* Monotonic milliseconds (timings for --verbose and the benchmark). */
static inline double vk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- errors ---------------------------------------------------------------------------------- */

/* Maps a failed VkResult to a ddpm_result (out-of-memory codes -> DDPM_ERR_NOMEM, others ->
 * DDPM_ERR_VULKAN) and records "<what> failed: VK_ERROR_...". */
ddpm_result vk_fail(VkResult r, const char *what);
const char *vk_result_name(VkResult r);

/* Evaluates a Vulkan call; on a negative VkResult stores the mapped error in `res` and jumps to `cleanup`. */
#define VK_TRY(call)                                                                                         \
    do {                                                                                                     \
        VkResult vk_try_r_ = (call);                                                                         \
        if (vk_try_r_ < 0) {                                                                                 \
            res = vk_fail(vk_try_r_, #call);                                                                 \
            goto cleanup;                                                                                    \
        }                                                                                                    \
    } while (0)

/* ---- instance and devices -------------------------------------------------------------------- */

/* Compute limits and features of a device, all read from the driver (never assumed). */
typedef struct vk_limits {
    uint32_t api_version;           /* effective: min(instance request, device) */
    uint32_t max_shared_memory;     /* maxComputeSharedMemorySize, bytes */
    uint32_t max_invocations;       /* maxComputeWorkGroupInvocations */
    uint32_t max_group_size[3];     /* maxComputeWorkGroupSize */
    uint32_t max_group_count[3];    /* maxComputeWorkGroupCount */
    uint32_t max_storage_range;     /* maxStorageBufferRange, bytes */
    uint32_t max_push_constants;    /* maxPushConstantsSize, bytes */
    uint32_t max_storage_buffers;   /* maxPerStageDescriptorStorageBuffers */
    uint32_t subgroup_size;         /* VkPhysicalDeviceSubgroupProperties */
    int subgroup_compute;           /* subgroup operations are supported in compute shaders */
    int fp16_arith;                 /* shaderFloat16 */
    int storage16;                  /* storageBuffer16BitAccess */
    VkDeviceSize min_storage_align; /* minStorageBufferOffsetAlignment */
} vk_limits;

/* Everything known about one physical device before it is opened. */
typedef struct vk_device_info {
    VkPhysicalDevice physical;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    char driver_name[VK_MAX_DRIVER_NAME_SIZE]; /* "" when the driver does not say */
    char driver_info[VK_MAX_DRIVER_INFO_SIZE];
    vk_limits limits;
    int compute_family;     /* first queue family with compute, -1 if none */
    int need_f16_ext;       /* VK_KHR_shader_float16_int8 must be enabled for fp16 (API 1.1 devices) */
    int portability_subset; /* VK_KHR_portability_subset must be enabled (MoltenVK) */
    int creation_feedback;  /* VK_EXT_pipeline_creation_feedback is available */
    const char *unusable;   /* NULL when the device can run ddpm-vk, else why not */
} vk_device_info;

/* An instance, with the validation layer and a message-counting debug messenger when
 * $DDPM_VALIDATION is set (non-empty and not "0"). */
typedef struct vk_instance {
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    uint32_t api_version; /* requested apiVersion: 1.2 when the loader has it, else 1.1 */
    int validation;
} vk_instance;

/* Loads the Vulkan loader (once per process) and creates an instance. DDPM_ERR_NO_DEVICE when there
 * is no loader or it is older than 1.1; DDPM_ERR_UNSUPPORTED when validation is asked for but the
 * Khronos layer is missing. */
ddpm_result vk_instance_create(vk_instance *vi);
void vk_instance_destroy(vk_instance *vi);

/* All physical devices with their properties; *infos is malloc'ed (caller frees). */
ddpm_result vk_enumerate_devices(const vk_instance *vi, vk_device_info **infos, uint32_t *count);

/* ---- context --------------------------------------------------------------------------------- */

/* A buffer and its memory; `mapped` is non-NULL when the memory is host-visible (mapped once). */
typedef struct vk_buffer {
    VkBuffer buffer;
    VkDeviceMemory memory;
    VkDeviceSize size;
    void *mapped;
} vk_buffer;

typedef struct vk_context {
    vk_instance inst;
    vk_device_info info;
    VkPhysicalDevice physical;
    VkDevice device;
    uint32_t queue_family;
    VkQueue queue;
    VkCommandPool pool;             /* command buffers may be reset individually */
    VkPipelineCache pipeline_cache; /* loaded from / saved to the disk cache (see vk_context_create) */
    char cache_path[1024];          /* "" when there is no cache directory */
    size_t cache_loaded;            /* bytes read from the cache file (0: none) */
    uint32_t pipelines_created;     /* compute pipelines created in this context */
    uint32_t pipelines_cached;      /* of those, reported as cache hits by pipeline creation feedback */
    uint32_t cache_saved_at;        /* pipelines_created when the cache file was last written */
    int creation_feedback;          /* VK_EXT_pipeline_creation_feedback is on */
    double pipeline_ms;             /* time spent creating pipelines */
    VkCommandBuffer cmd;            /* one-shot work: staging copies, ad-hoc dispatches */
    VkFence fence;                  /* every submission waits on it, then resets it */
    vk_limits limits;
    const char *name; /* points into info.props.deviceName */
    /* Device-local memory that is also host-visible (UMA, lavapipe) is mapped and written directly.
     * Tests clear this to exercise the staging path. */
    int direct_map;
    vk_buffer staging; /* grown on demand by upload/download */
} vk_context;

/* Opens the device named by spec (see vk_backend_create in vk.h; NULL or "": the best type).
 * On failure everything created so far is destroyed and *ctx is zeroed. */
ddpm_result vk_context_create(const char *spec, vk_context *ctx);
/* Clamps the context's limits to the Android baseline 2022 floor (DESIGN.md): 16 KiB shared memory,
 * 128 invocations (and per dimension), 2^27-byte storage buffer range, 128 bytes of push constants,
 * 4 storage buffers per stage. Call before creating programs. */
void vk_context_clamp_baseline(vk_context *ctx);
/* Writes the pipeline cache to disk when it changed (atomic); also done by vk_context_destroy. */
void vk_context_save_cache(vk_context *ctx);
/* Waits for the device to go idle, then destroys in reverse order. A zeroed context is ignored. */
void vk_context_destroy(vk_context *ctx);

/* Gives an object a debug name (only when validation is on, otherwise free). */
void vk_set_name(const vk_context *ctx, VkObjectType type, uint64_t handle, const char *name);

/* Allocates a primary command buffer from the context's pool (for command buffers recorded once and
 * replayed); free with vkFreeCommandBuffers or let vk_context_destroy reclaim the pool. */
ddpm_result vk_cmd_alloc(vk_context *ctx, VkCommandBuffer *cmd);
/* Submits a recorded command buffer and waits for it to finish. */
ddpm_result vk_submit_wait(vk_context *ctx, VkCommandBuffer cmd);
/* Resets and begins ctx->cmd for one-time work; vk_oneshot_end ends, submits and waits. */
ddpm_result vk_oneshot_begin(vk_context *ctx, VkCommandBuffer *cmd);
ddpm_result vk_oneshot_end(vk_context *ctx);

/* A global memory barrier (all our buffers are accessed whole, so no buffer barriers). */
void vk_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkAccessFlags src_access,
                VkPipelineStageFlags dst_stage, VkAccessFlags dst_access);
/* The barriers the backend needs: shader writes -> next dispatch; host/transfer writes -> shaders;
 * shader writes -> host reads and transfers. */
void vk_barrier_compute(VkCommandBuffer cmd);
void vk_barrier_to_compute(VkCommandBuffer cmd);
void vk_barrier_from_compute(VkCommandBuffer cmd);

/* ---- buffers --------------------------------------------------------------------------------- */

typedef enum vk_mem_kind {
    VK_MEM_DEVICE, /* device-local; mapped only when also host-visible and ctx->direct_map */
    VK_MEM_HOST,   /* host-visible and coherent, mapped once (small per-step parameters, staging) */
} vk_mem_kind;

/* A storage buffer usable as a transfer source and destination. size must be > 0. */
ddpm_result vk_buffer_create(vk_context *ctx, VkDeviceSize size, vk_mem_kind kind, const char *name,
                             vk_buffer *out);
/* Destroys and zeroes; a zeroed buffer is ignored. The device must not be using it. */
void vk_buffer_destroy(vk_context *ctx, vk_buffer *b);
/* Copies host data into [offset, offset + size) of the buffer (directly when mapped, else through the
 * staging buffer, waiting for the copy). The GPU must be idle with respect to this buffer. */
ddpm_result vk_buffer_upload(vk_context *ctx, const vk_buffer *b, VkDeviceSize offset, const void *data,
                             VkDeviceSize size);
/* Copies [offset, offset + size) of the buffer to the host. */
ddpm_result vk_buffer_download(vk_context *ctx, const vk_buffer *b, VkDeviceSize offset, void *data,
                               VkDeviceSize size);

/* ---- programs -------------------------------------------------------------------------------- */

/* Every embedded shader variant: VK_SHADERS(X) comes from the `shaders` list in meson.build (adding a
 * shader is one entry there), generated into vk_shader_list.h. */
#include "vk_shader_list.h"

typedef enum vk_shader_id {
#define X(name) VK_SHADER_##name,
    VK_SHADERS(X)
#undef X
        VK_SHADER_COUNT
} vk_shader_id;

typedef struct vk_shader_code {
    const char *name;
    const uint32_t *code;
    size_t size; /* bytes */
} vk_shader_code;

extern const vk_shader_code vk_shader_table[VK_SHADER_COUNT];

/* Specialization constant ids reserved for the workgroup size (layout(local_size_x_id = 0, ...));
 * a program's own constants start at VK_SPEC_FIRST_USER. */
#define VK_SPEC_LOCAL_X 0
#define VK_SPEC_LOCAL_Y 1
#define VK_SPEC_LOCAL_Z 2
#define VK_SPEC_FIRST_USER 3
#define VK_MAX_SPEC 16

typedef struct vk_program_desc {
    vk_shader_id shader;
    uint32_t n_buffers;     /* storage buffers at bindings 0 .. n_buffers - 1 */
    uint32_t push_size;     /* bytes of push constants (0: none), checked against the device */
    uint32_t local_size[3]; /* 0 in x: the device default (min(256, limits)); 0 in y, z: 1 */
    const uint32_t *spec;   /* values of constants VK_SPEC_FIRST_USER.. (may be NULL) */
    uint32_t n_spec;
    uint32_t max_sets; /* descriptor sets (one per distinct buffer binding); 0 means 1 */
} vk_program_desc;

/* A compute pipeline with its layouts and descriptor sets. */
typedef struct vk_program {
    VkShaderModule module;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    VkPipeline pipeline;
    VkDescriptorPool pool;
    VkDescriptorSet *sets; /* max_sets, allocated at creation */
    uint32_t max_sets;
    uint32_t n_buffers;
    uint32_t push_size;
    uint32_t local_size[3];
    const char *name;
} vk_program;

ddpm_result vk_program_create(vk_context *ctx, const vk_program_desc *desc, vk_program *out);
/* Destroys and zeroes; a zeroed program is ignored. */
void vk_program_destroy(vk_context *ctx, vk_program *p);
/* Points descriptor set `set` at bufs[0 .. n_buffers - 1] (whole buffers; each must fit in
 * maxStorageBufferRange, else DDPM_ERR_UNSUPPORTED). Not while a command buffer using it runs. */
ddpm_result vk_program_bind(vk_context *ctx, vk_program *p, uint32_t set, const vk_buffer *const *bufs);
/* Records a dispatch covering threads_x * threads_y * threads_z invocations (rounded up to whole
 * workgroups; shaders bound-check). push_size must equal the program's; group counts are checked
 * against the device. */
ddpm_result vk_program_dispatch(const vk_context *ctx, VkCommandBuffer cmd, const vk_program *p, uint32_t set,
                                const void *push, uint32_t push_size, uint32_t threads_x, uint32_t threads_y,
                                uint32_t threads_z);

/* ---- push constants of the embedded shaders (std430 layouts, mirrored in the .comp files) ---- */

#define VK_NOISE_NORMAL 0u /* normals, as rng_normal_fill */
#define VK_NOISE_RAW 1u    /* raw Philox words (debug / tests): element e gets word e%4 of block e/4 */

typedef struct vk_noise_push {
    uint32_t per_image;        /* elements per image */
    uint32_t n_images;         /* images in the dispatch */
    uint32_t first_image;      /* Philox counter word 1 of the first image */
    uint32_t step;             /* counter word 2 */
    uint32_t seed_lo, seed_hi; /* key */
    uint32_t mode;             /* VK_NOISE_NORMAL or VK_NOISE_RAW */
    uint32_t raw_ctr0;         /* raw mode: added to counter word 0 */
    uint32_t raw_ctr3;         /* raw mode: counter word 3 (0 otherwise) */
} vk_noise_push;

/* update.comp: bindings x (rw), model_out, coef table (n_steps rows), step index (one uint). */
typedef struct vk_update_push {
    uint32_t per_image;
    uint32_t n_images;
    uint32_t first_image;
    uint32_t seed_lo, seed_hi;
} vk_update_push;

/* conv2d.comp (also every linear layer: a 1x1 convolution over a 1x1 image). */
typedef struct vk_conv_push {
    uint32_t in_off, in_bs, out_off, out_bs;
    uint32_t temb_off, temb_bs, res_off, res_bs;
    uint32_t w_off, b_off;
    uint32_t ci, h, w, co, ho, wo;
    uint32_t k, stride, pad_t, pad_l;
    uint32_t n_total;
    uint32_t flags;
    float scale;
} vk_conv_push;

typedef struct vk_groupnorm_push {
    uint32_t in_off, in_bs, out_off, out_bs;
    uint32_t gamma_off, beta_off;
    uint32_t c, hw, groups, silu;
    float eps;
} vk_groupnorm_push;

typedef struct vk_attention_push {
    uint32_t q_off, q_bs, k_off, k_bs, v_off, v_bs, out_off, out_bs;
    uint32_t hw;
    float scale;
} vk_attention_push;

typedef struct vk_time_embed_push {
    uint32_t out_off, out_bs, c, n_images, flip;
    float freq_shift;
} vk_time_embed_push;

typedef struct vk_eltwise_push {
    uint32_t mode, n, n_images;
    uint32_t in_off, in_bs, out_off, out_bs;
    uint32_t h, w;
} vk_eltwise_push;

/* ---- the U-Net on the GPU (unet.c) --------------------------------------------------------------- */

typedef struct vk_unet vk_unet;

enum { VK_CONV_AUTO = 0, VK_CONV_SHARED, VK_CONV_REG };

typedef struct vk_unet_desc {
    const ddpm_graph *graph;
    const float *const *weights; /* float32, per graph param */
    int chunk;                   /* images per evaluation (the arena is planned for this many) */
    int fp16;                    /* fp16 storage of activations and weights (needs storage16) */
    int keep_all;                /* no memory reuse: every value can be downloaded (tests) */
    int conv;                    /* VK_CONV_AUTO (register tiles on CPU devices, else shared-memory
                                  * tiles), VK_CONV_SHARED or VK_CONV_REG (tests run both) */
    uint32_t group;              /* workgroup invocations; 0: 256 on GPUs, 64 on CPU devices (tests set
                                  * 256 to run the GPU configuration on lavapipe); capped by the device */
    uint64_t act_range;          /* bytes per activation buffer; 0 (or above it): the device's storage
                                  * buffer range (tests clamp it to spread the activations) */
    /* The float32 input x (n, in) and output (n, out) buffers, the coefficient table and the step index
     * (TIME_EMBED reads t = coef[step * DDPM_COEF_STRIDE + DDPM_COEF_T]). */
    const vk_buffer *x, *out, *coef, *step;
} vk_unet_desc;

/* Creates the programs, uploads the weights (split into arenas within the storage buffer range) and
 * allocates the activation buffers (one, or several within the range: vk_plan_make), each node's
 * descriptor set pointing at the buffers of its reads, weights and output. */
ddpm_result vk_unet_create(vk_context *ctx, const vk_unet_desc *d, vk_unet **out);
/* Records one evaluation for images first .. first + n - 1 (n <= chunk) of x into the same images of
 * out: copy in, every node (barriers only between dependent nodes), copy out. Starts and ends with a
 * compute barrier. */
ddpm_result vk_unet_record(vk_unet *u, VkCommandBuffer cmd, int first, int n);
/* Downloads value v of the n images of the last evaluation (keep_all, or a value still live at the end)
 * as float32 (n, numel). */
ddpm_result vk_unet_download(vk_unet *u, int v, int n, float *host);
/* Dispatches (nodes with work + the copies in and out) and barriers between them in the last
 * vk_unet_record. */
void vk_unet_counts(const vk_unet *u, uint32_t *dispatches, uint32_t *barriers);
/* Device bytes held: weights, activation buffers. */
void vk_unet_memory(const vk_unet *u, uint64_t *weights, uint64_t *arena);
/* The number of activation buffers, and the bytes of the largest. */
int vk_unet_act_buffers(const vk_unet *u, uint64_t *largest);
/* Records node `node` alone for n images (the per-layer benchmark): it reads whatever its input
 * buffers hold (valid values after a keep_all evaluation). */
ddpm_result vk_unet_record_node(vk_unet *u, VkCommandBuffer cmd, int node, int n);
void vk_unet_destroy(vk_unet *u);

#endif
