/* adamw.h: torch.optim.AdamW's update (decoupled weight decay, bias correction), on flat float arrays,
 * and the global-norm gradient clipping of torch.nn.utils.clip_grad_norm_. */
#ifndef DDPM_TRAIN_ADAMW_H
#define DDPM_TRAIN_ADAMW_H

#include <stdint.h>

typedef struct adamw_opts {
    double lr, beta1, beta2, eps, weight_decay;
} adamw_opts;

/* One step (step >= 1 is the count including this one) over n parameters p with gradients g and moments
 * m, v, in torch's order: p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). Scalars in double, applied in fp32. */
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, const adamw_opts *o);

/* The L2 norm of g (n floats), accumulated in double. */
double grad_global_norm(const float *g, int64_t n);
/* Scales g by max_norm / (norm + 1e-6) when that is below 1 (clip_grad_norm_); returns the factor used. */
float grad_clip(float *g, int64_t n, double norm, double max_norm);

#endif
