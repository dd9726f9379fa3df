/* sampler.h: the reverse process as data: a plan (timesteps + a per-step coefficient table, see
 * shaders/shared.h) that both the CPU update and the update shader read, and the backend interface. */
#ifndef DDPM_SAMPLER_H
#define DDPM_SAMPLER_H

#include "model.h"

typedef struct sampler_plan {
    int n_steps;
    int *timesteps; /* n_steps, descending */
    float *coef;    /* n_steps * DDPM_COEF_STRIDE */
} sampler_plan;

/* Builds the plan following diffusers DDPMScheduler.step / DDIMScheduler.step (set_alpha_to_one,
 * clip_sample, prediction_type, variance_type), with options resolved against the model defaults. */
ddpm_result sampler_plan_make(const ddpm_schedule_config *s, const ddpm_sample_opts *o, sampler_plan *p);
void sampler_plan_free(sampler_plan *p);

/* One update on the CPU for n_images images (image k has index first_image + k): reads row `step`
 * of the plan, draws z with counter step `step` when SIGMA != 0. x_out may alias x. */
void update_cpu(float *x_out, const float *x, const float *model_out, const float *coef_row,
                int64_t per_image, int n_images, int first_image, uint32_t step, uint64_t seed);

/* A backend runs the U-Net and the update. The state x lives wherever the backend keeps it. */
typedef struct backend backend;
struct backend {
    const char *name; /* for messages, e.g. "cpu" or the Vulkan device name */
    /* x_T from the host (init != NULL) or from the seed's noise (counter step DDPM_NOISE_STEP_INIT) */
    ddpm_result (*start)(backend *b, const float *init);
    /* U-Net at plan timestep i, then the update of row i */
    ddpm_result (*step)(backend *b, int i);
    /* copies x to the host (n, C, H, W) */
    ddpm_result (*finish)(backend *b, float *out);
    void (*destroy)(backend *b);
};

/* Checks the batch options (image count, first index, channels) against the model, for every backend, and
 * returns the elements per image. */
ddpm_result sampler_check_batch(const ddpm_model *m, const ddpm_sample_opts *o, int64_t *per_image);

ddpm_result cpu_backend_create(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                               backend **out);

#endif
