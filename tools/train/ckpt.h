/* ckpt.h: ddpm-train checkpoints: one safetensors file holding the weights, their EMA, the AdamW moments
 * (flat F32 tensors) and, in the metadata, the step, the training config text and the display state. */
#ifndef DDPM_TRAIN_CKPT_H
#define DDPM_TRAIN_CKPT_H

#include "common.h"

/* Every other random draw of a run is a function of (seed, step, image index), so (config, step) is the
 * whole state: the data order (epoch permutation and position) and the RNG state follow from them. */
typedef struct train_state {
    int64_t n;       /* parameters */
    float *weights;  /* n */
    float *ema;      /* n */
    float *adam_m;   /* n */
    float *adam_v;   /* n */
    int64_t step;    /* optimizer steps done */
    double loss_avg; /* smoothed loss shown in the progress line */
    double seconds;  /* training wall time so far, over every run of the checkpoint */
} train_state;

/* Writes the state atomically (temporary file, fsync, rename). config: the run's config text
 * ("key=value" lines), unet/sched: the model and scheduler JSON; epoch/position are informational. */
ddpm_result ckpt_save(const char *path, const train_state *s, const char *config, const char *unet_json,
                      const char *sched_json, int64_t epoch, int64_t position);

/* Reads a checkpoint into s (whose n and arrays the caller set up), refusing one whose config text differs
 * from `config` with the first differing line of each in the message. */
ddpm_result ckpt_load(const char *path, train_state *s, const char *config);

#endif
