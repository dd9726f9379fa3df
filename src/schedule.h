/* schedule.h: beta schedules (double precision, as diffusers computes them) and the inference
 * timesteps for each spacing. */
#ifndef DDPM_SCHEDULE_H
#define DDPM_SCHEDULE_H

#include "config.h"

/* betas[T] for the config's schedule. */
ddpm_result schedule_betas(const ddpm_schedule_config *s, double *betas);
/* alphas_cumprod[T] = prod_{i<=t} (1 - beta_i). */
void schedule_alphas_cumprod(const double *betas, int T, double *acp);
/* The S model timesteps, in the order they are visited (descending). DDPM_SPACING_DEFAULT means
 * leading for DDIM and, for DDPM, every step when S == T (else leading, as diffusers). Errors on
 * S < 1, S > T, or a spacing producing repeated timesteps. */
ddpm_result schedule_timesteps(const ddpm_schedule_config *s, ddpm_sampler_kind kind, ddpm_spacing spacing,
                               int S, int *ts);

#endif
