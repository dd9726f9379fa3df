/* vk.h: the Vulkan backend's entry points used by the rest of the library and the command:
 * device listing and selection, and the sampling backend. Internals live in vk_internal.h. */
#ifndef DDPM_VK_H
#define DDPM_VK_H

#include "../sampler.h"
#include <stdio.h>

/* Prints every Vulkan device: index, name, type, driver, API version, memory heaps, compute limits,
 * subgroup size, fp16 arithmetic and 16-bit storage support. DDPM_ERR_NO_DEVICE when there is no
 * loader or no device (with a message saying so). */
ddpm_result vk_print_devices(FILE *out);

/* Creates the Vulkan sampling backend on the device named by spec: a decimal index, or a
 * case-insensitive substring of the device name (ambiguous or unmatched: DDPM_ERR_NO_DEVICE, with the
 * list of names in the message); NULL picks discrete > integrated > virtual > cpu-type device, "gpu" the
 * same without cpu-type devices (lavapipe, SwiftShader: DDPM_ERR_NO_DEVICE when only those exist).
 * The validation layer and a message-counting debug messenger are on when $DDPM_VALIDATION is set
 * (then a missing layer is an error). */
ddpm_result vk_backend_create(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                              const char *spec, backend **out);

/* Validation messages (warnings and errors) reported since start-up; tests require 0. */
unsigned vk_validation_message_count(void);

#endif
