/* plan.h: device memory planning of the Vulkan U-Net, free of Vulkan so `ddpm-vk info` can use it:
 * where each activation lives (which buffer within the storage buffer range, liveness reuse, concat
 * inputs written in place), the weight arenas, and the peak memory a batch needs. */
#ifndef DDPM_VK_PLAN_H
#define DDPM_VK_PLAN_H

#include "graph.h"

#define VK_PLAN_ALIGN 64 /* elements: arena offsets stay aligned for fp16 and fp32 alike */

/* Where every value lives for a batch of `batch` images. A value's image b starts at element
 * off[v] + b * bs[v] of activation buffer buf[v]; -1 in off and buf for values never stored (the
 * timestep). */
typedef struct vk_plan {
    int batch;
    int64_t *off;       /* per value, elements from the start of its buffer */
    int64_t *bs;        /* per value: batch stride (the numel of the storage it lives in) */
    int *root;          /* per value: the value whose storage it shares (itself when not aliased) */
    int *buf;           /* per value: its activation buffer */
    int n_bufs;         /* activation buffers */
    int64_t *buf_elems; /* per buffer, elements */
    int64_t arena;      /* elements of all buffers together */
} vk_plan;

/* Plans the activations of `batch` images. keep_all: no reuse (every value stays readable: tests).
 * Concat inputs become channel slices of the concat's storage; a graph where that is impossible (an
 * input joined twice, or the graph input) gives DDPM_ERR_UNSUPPORTED. max_elems (0: no limit) caps
 * each buffer: when everything does not fit one buffer, the values a node reads together are placed
 * side by side in one buffer (a kernel binds one buffer for its reads and one for its output) and
 * these groups are spread first-fit over as many buffers as needed, space reused by liveness within
 * each; DDPM_ERR_UNSUPPORTED when one group (or one tensor) is above max_elems. */
ddpm_result vk_plan_make(const ddpm_graph *g, int batch, int keep_all, int64_t max_elems, vk_plan *p);
void vk_plan_free(vk_plan *p);

/* Weight arenas: each node's params sit together in one arena of at most max_bytes. param_arena and
 * param_off (elements) are per param (may be NULL to only count); returns the number of arenas and the
 * elements of each in arena_elems (up to max_arenas; pass NULL to skip), -1 when one node's params
 * exceed max_bytes. */
int vk_plan_weights(const ddpm_graph *g, int elem_bytes, uint64_t max_bytes, int *param_arena,
                    int64_t *param_off, int64_t *arena_elems, int max_arenas);

/* Device memory of a run of n images: weights + activations (in chunks of *chunk images: the most
 * whose activations fit one buffer of max_range bytes, or one image spread over several buffers when
 * its activations alone are above max_range) + the state, model output and coefficient table. */
typedef struct vk_mem_estimate {
    int chunk;        /* images per U-Net evaluation (0: one tensor, or a node's inputs, of one image
                       * is above max_range; activations then holds one image's total) */
    uint64_t weights; /* bytes */
    uint64_t activations;
    uint64_t state; /* x and model_out, float32 */
    uint64_t total;
} vk_mem_estimate;

ddpm_result vk_plan_memory(const ddpm_graph *g, int n, int elem_bytes, uint64_t max_range, int n_steps,
                           vk_mem_estimate *e);

/* The most images (<= n) whose run fits `budget` bytes with every buffer within max_range; 0 if none. */
int vk_plan_max_batch(const ddpm_graph *g, int n, int elem_bytes, uint64_t max_range, int n_steps,
                      uint64_t budget);

#endif
