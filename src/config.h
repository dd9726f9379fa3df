/* config.h: the model config (diffusers UNet2DModel fields) and the noise schedule config
 * (diffusers DDPMScheduler fields). Both travel as JSON in the safetensors __metadata__. */
#ifndef DDPM_CONFIG_H
#define DDPM_CONFIG_H

#include "common.h"

#define DDPM_MAX_LEVELS 8

typedef struct ddpm_unet_config {
    int in_channels, out_channels; /* 1..4 */
    int sample_size;               /* square images: H = W = sample_size */
    int levels;                    /* len(block_out_channels) */
    int block_out_channels[DDPM_MAX_LEVELS];
    int down_attn[DDPM_MAX_LEVELS]; /* down_block_types[i] == "AttnDownBlock2D" */
    int up_attn[DDPM_MAX_LEVELS]; /* up_block_types[i] == "AttnUpBlock2D" (i = 0 is the lowest resolution) */
    int layers_per_block;
    int mid_attn; /* add_attention (diffusers default true) */
    int norm_num_groups;
    float norm_eps;
    int attention_head_dim; /* 0 (null in JSON): one head over all channels */
    int downsample_padding; /* 0: pad right/bottom by one (TF SAME); 1: symmetric 1 */
    float freq_shift;
    int flip_sin_to_cos;
    float mid_block_scale_factor;
} ddpm_unet_config;

typedef enum {
    BETA_LINEAR,
    BETA_SCALED_LINEAR,
    BETA_SQUAREDCOS_CAP_V2,
    BETA_QUAD,
    BETA_SIGMOID
} ddpm_beta_kind;
typedef enum { PRED_EPSILON, PRED_SAMPLE, PRED_V } ddpm_prediction;
typedef enum { VAR_FIXED_SMALL, VAR_FIXED_LARGE } ddpm_variance;

typedef struct ddpm_schedule_config {
    ddpm_beta_kind beta_schedule;
    double beta_start, beta_end; /* linear 1e-4 .. 0.02 */
    int num_train_timesteps;     /* T, 1000 */
    ddpm_variance variance_type;
    int clip_sample;
    double clip_sample_range; /* 1.0 */
    ddpm_prediction prediction_type;
    int steps_offset;     /* diffusers "leading" spacing offset, 0 */
    int set_alpha_to_one; /* DDIM: alpha_prod at t < 0 is 1 (else alphas_cumprod[0]); default 1 */
} ddpm_schedule_config;

/* Defaults: the google/ddpm-cifar10-32 config (levels 128,256,256,256, attention at level 1). */
void unet_config_default(ddpm_unet_config *c);
/* Defaults: linear 1e-4 .. 0.02, T 1000, fixed_small, clip on, epsilon. */
void schedule_config_default(ddpm_schedule_config *s);

/* Checks ranges and consistency (channels 1..4, groups divide every channel count, size divisible
 * by the downsampling, head dim divides channels, ...). Returns DDPM_ERR_MODEL with a message. */
ddpm_result unet_config_validate(const ddpm_unet_config *c);
ddpm_result schedule_config_validate(const ddpm_schedule_config *s);

/* JSON (diffusers config.json / scheduler_config.json text) <-> structs. Unknown keys are ignored;
 * a key with the wrong type or an unsupported value (e.g. a block type other than the four DDPM ones)
 * is an error. Missing keys keep the defaults above. */
ddpm_result unet_config_from_json(const char *json, size_t len, ddpm_unet_config *c);
ddpm_result schedule_config_from_json(const char *json, size_t len, ddpm_schedule_config *s);
/* malloc'ed, NUL-terminated JSON text; NULL on allocation failure. */
char *unet_config_to_json(const ddpm_unet_config *c);
char *schedule_config_to_json(const ddpm_schedule_config *s);

#endif
