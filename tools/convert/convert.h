/* convert.h: ddpm-convert's engine: finds the weights, config and scheduler of a diffusers folder or a
 * single checkpoint, maps foreign key names onto diffusers UNet2DModel names, and inspects files. */
#ifndef DDPM_CONVERT_H
#define DDPM_CONVERT_H

#include "model.h"

#include <stdio.h>

typedef struct convert_opts {
    const char *config;    /* --config: a diffusers UNet2DModel config.json, or NULL */
    const char *scheduler; /* --scheduler: a scheduler_config.json, or NULL */
    const char *select;    /* --select: the sub-dict of a PyTorch checkpoint to read ("4", "ema"), or NULL */
} convert_opts;

/* What convert_load found, for the user (paths point into static or caller-owned storage). */
typedef struct convert_report {
    char weights[1024];   /* the weight file read */
    char config[1024];    /* where the config came from */
    char scheduler[1024]; /* where the schedule came from ("defaults ..." when nowhere) */
    const char *naming;   /* "diffusers", "diffusers (old attention names)", "original DDPM port" */
    char state_dict[256]; /* the PyTorch sub-dict read ("state_dict.module", "4"), or "" */
    int n_tensors;
    int n_renamed; /* tensors whose key was mapped */
    int dtypes[3]; /* tensors per st_dtype in the input */
} convert_report;

/* Reads IN (a diffusers model or pipeline folder, or a .safetensors/.bin/.pt/.ckpt file), maps its
 * keys, and binds every tensor to the graph of the config (names and shapes checked; unknown and
 * missing keys listed). On success *out owns a model with float32 weights (free: ddpm_model_free).
 * Nothing is written. report may be NULL. */
ddpm_result convert_load(const char *in, const convert_opts *o, ddpm_model **out, convert_report *report);

/* Writes the model as ddpm-vk safetensors (atomically); F16 refuses weights beyond its range (65504)
 * by name instead of storing infinities. */
ddpm_result convert_save(const ddpm_model *m, const char *path, st_dtype dtype);

/* Reads a file or folder as convert_load would (native or foreign) and prints its config, schedule,
 * tensor table (stored name, mapped name when different, dtype, shape), parameter count and the
 * FNV-1a 64 checksum of the stored tensor bytes, then whether it binds to the config. Returns the
 * result of reading; a failed binding is printed, not returned. */
ddpm_result convert_inspect(const char *in, const convert_opts *o, FILE *out);

/* FNV-1a 64 over a byte range, continuing from h (start with CONVERT_FNV_OFFSET). */
#define CONVERT_FNV_OFFSET 0xcbf29ce484222325ull
uint64_t convert_fnv1a(uint64_t h, const uint8_t *p, size_t n);

/* The diffusers name of a key in the original DDPM PyTorch port's naming (pesser/pytorch_diffusion,
 * ermongroup/ddim: temb.dense.0, down.1.attn.0.q, up.3.upsample.conv, ...) for a U-Net with `levels`
 * levels, written to out. Returns 1 when the key was mapped, 0 when it is not such a key. */
int convert_map_original(const char *key, int levels, char *out, size_t n);

#endif
