/* train.h: training on the CPU backend: a forward that keeps what backward needs, and a backward
 * that walks the same graph in reverse, accumulating (+=) into parameter gradients. */
#ifndef DDPM_CPU_TRAIN_H
#define DDPM_CPU_TRAIN_H

#include "../graph.h"

typedef struct cpu_trainer cpu_trainer;

/* Plans a training forward/backward of graph g at batch B with dropout probability p in [0, 1)
 * (diffusers' ResnetBlock2D dropout between SiLU(norm2) and conv2; 0 disables it). The batch is split
 * into min(B, omp_get_max_threads()) shards run in parallel (see train.c): results depend on the thread
 * count at creation only through rounding, and are otherwise reproducible run to run. Dropout masks are
 * keyed by (seed, image index in the batch, node), whatever the sharding. g must outlive the trainer. */
ddpm_result cpu_train_create(const ddpm_graph *g, int B, float dropout, cpu_trainer **out);
void cpu_train_free(cpu_trainer *tr);

/* Forward of x (B, Cin, S, S) at timesteps t (B); dropout masks drawn from dropout_seed (Philox).
 * *out points at the model output (B, Cout, S, S), owned by the trainer, valid until the next call. */
ddpm_result cpu_train_forward(cpu_trainer *tr, const float *const *weights, const float *x, const float *t,
                              uint64_t dropout_seed, const float **out);

/* Backward of the last forward from dout (B, Cout, S, S): grads[i] += dL/dweights[i] for every param
 * (grads[i] has params[i].numel floats). */
ddpm_result cpu_train_backward(cpu_trainer *tr, const float *const *weights, const float *dout,
                               float *const *grads);

#endif
