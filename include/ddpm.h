/* ddpm.h: the public C API of libddpm, a diffusion sampler (DDPM, DDIM) for Vulkan GPUs and the CPU.
 * Opaque handles, ddpm_ prefix, every fallible call returns ddpm_result. */
#ifndef DDPM_H
#define DDPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(DDPM_SHARED_BUILD)
#define DDPM_API __declspec(dllexport)
#elif defined(__GNUC__)
#define DDPM_API __attribute__((visibility("default")))
#else
#define DDPM_API
#endif

typedef enum ddpm_result {
    DDPM_OK = 0,
    DDPM_ERR_ARG,         /* a bad argument or option value */
    DDPM_ERR_IO,          /* a file could not be opened, read or written */
    DDPM_ERR_FORMAT,      /* a file is malformed (truncated, bad header, bad offsets) */
    DDPM_ERR_MODEL,       /* weights disagree with the config (missing, unknown, wrong shape/dtype) */
    DDPM_ERR_NOMEM,       /* an allocation failed or a size is absurd */
    DDPM_ERR_VULKAN,      /* a Vulkan call failed */
    DDPM_ERR_NO_DEVICE,   /* no usable device matched the request */
    DDPM_ERR_UNSUPPORTED, /* a valid request this build or device cannot do */
} ddpm_result;

/* A static string naming the code. */
DDPM_API const char *ddpm_result_string(ddpm_result r);

/* The detailed message of the last failure on the calling thread (one line, no newline), or "".
 * The pointer stays valid until the next failing call on the same thread. */
DDPM_API const char *ddpm_last_error(void);

/* ---- models ---------------------------------------------------------------------------------- */

typedef struct ddpm_model ddpm_model;

/* Loads a ddpm-vk safetensors file (config + schedule in __metadata__, diffusers UNet2DModel tensor
 * names, F32/F16/BF16). The file is treated as hostile: every size and offset is checked. On success
 * *out owns the model; free it with ddpm_model_free. Thread-safe for distinct outputs. */
DDPM_API ddpm_result ddpm_model_load(const char *path, ddpm_model **out);

/* Frees a model; NULL is ignored. */
DDPM_API void ddpm_model_free(ddpm_model *m);

/* Image geometry of a model's samples: channels, height, width. */
DDPM_API void ddpm_model_image_shape(const ddpm_model *m, int *channels, int *height, int *width);

/* ---- sampling -------------------------------------------------------------------------------- */

typedef enum ddpm_sampler_kind { DDPM_SAMPLER_DDPM = 0, DDPM_SAMPLER_DDIM } ddpm_sampler_kind;

typedef enum ddpm_spacing {
    DDPM_SPACING_DEFAULT = 0, /* ddpm: every training step; ddim: leading (diffusers' default) */
    DDPM_SPACING_UNIFORM,     /* the DDIM paper's uniform: t = i * (T / S) */
    DDPM_SPACING_QUAD,        /* the DDIM paper's quadratic: t = (i * sqrt(0.8 T) / S)^2 */
    DDPM_SPACING_LEADING,     /* diffusers: arange(S) * (T // S) + steps_offset */
    DDPM_SPACING_TRAILING,    /* diffusers: round(arange(T, 0, -T / S)) - 1 */
    DDPM_SPACING_LINSPACE,    /* diffusers: round(linspace(0, T - 1, S)) */
} ddpm_spacing;

/* Called after each step; return non-zero to cancel (the call then returns DDPM_ERR_ARG). */
typedef int (*ddpm_progress_fn)(void *user, int step, int steps);
/* Informational one-line messages (which device runs, fallbacks). */
typedef void (*ddpm_log_fn)(void *user, const char *msg);

typedef struct ddpm_sample_opts {
    ddpm_sampler_kind sampler;
    int steps;            /* 0: the model's num_train_timesteps for ddpm, 50 for ddim */
    float eta;            /* ddim only, in [0, 1] */
    ddpm_spacing spacing; /* ddim (and ddpm with steps < T) */
    int variance;         /* -1: model default; 0: fixed_small; 1: fixed_large (ddpm) */
    int clip_sample;      /* -1: model default; 0 or 1 */
    uint64_t seed;
    int n;                     /* number of images */
    int first_index;           /* index of the first image, for sharding: noise depends on it */
    const float *init;         /* optional x_T (n, C, H, W); NULL: drawn from the seed */
    const char *device;        /* "cpu", an index, a name substring, or NULL ($DDPM_DEVICE, else default) */
    ddpm_progress_fn progress; /* optional */
    ddpm_log_fn log;           /* optional */
    int precision;             /* Vulkan storage: 0 auto (fp16 on GPUs with 16-bit storage), 32 or 16 */
    int baseline_limits;       /* Vulkan: clamp the device limits to the Android baseline 2022 floor */
    int verbose;               /* log details too (device memory, pipeline creation and cache) */
    void *user;                /* passed to progress and log */
} ddpm_sample_opts;

/* Fills opts with the defaults: ddpm, model's steps, eta 0, seed 0, n 1. */
DDPM_API void ddpm_sample_opts_default(ddpm_sample_opts *opts);

/* Runs the reverse process and writes x_0 (n, C, H, W), float32 in [-1, 1] nominal, into out, which the
 * caller allocates (n * C * H * W floats). */
DDPM_API ddpm_result ddpm_sample(const ddpm_model *m, const ddpm_sample_opts *opts, float *out);

#ifdef __cplusplus
}
#endif
#endif
