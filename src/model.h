/* model.h: a loaded model: config, schedule, graph and float32 weights bound to the graph's params.
 * Metadata keys: "ddpm.config" (UNet2DModel config JSON), "ddpm.scheduler" (scheduler JSON), "format". */
#ifndef DDPM_MODEL_H
#define DDPM_MODEL_H

#include "graph.h"
#include "safetensors.h"

#define DDPM_META_CONFIG "ddpm.config"
#define DDPM_META_SCHEDULER "ddpm.scheduler"

struct ddpm_model {
    ddpm_unet_config config;
    ddpm_schedule_config schedule;
    ddpm_graph graph;
    float **weights; /* weights[i]: graph.params[i].numel floats */
};

/* Builds the model from a parsed file: config from metadata, graph, then for every graph param the
 * tensor of the same name with the same shape (a 1x1 conv weight may be stored (Co,Ci) or (Co,Ci,1,1));
 * missing or unknown tensors are listed by name in the error. */
ddpm_result model_from_st(const st_file *f, const char *what, ddpm_model **out);
/* A model with the given config and weights drawn from N(0, std) by a seeded generator (tests). */
ddpm_result model_create_random(const ddpm_unet_config *c, const ddpm_schedule_config *s, uint64_t seed,
                                float std, ddpm_model **out);
/* Writes the model as ddpm-vk safetensors (F32 or F16). */
ddpm_result model_save(const ddpm_model *m, const char *path, st_dtype dtype);

#endif
