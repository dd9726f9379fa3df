/* cpu.h: the CPU backend: a reference forward of every graph op (plain C, OpenMP on outer loops)
 * and a forward of the whole graph. Layout NCHW float32; arguments: outputs, inputs, weights, sizes. */
#ifndef DDPM_CPU_H
#define DDPM_CPU_H

#include "../graph.h"

void time_embed_forward(float *out, const float *t, int B, int C, float freq_shift, int flip);
void linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int K, int M);
void silu_forward(float *out, const float *inp, int64_t n);
/* temb (B,Co) or NULL; res (B,Co,Ho,Wo) or NULL; out = (conv + bias + temb + res) * scale */
void conv2d_forward(float *out, const float *inp, const float *w, const float *b, const float *temb,
                    const float *res, float scale, int B, int Ci, int H, int W, int Co, int k, int stride,
                    int pt, int pl, int pb, int pr);
void groupnorm_forward(float *out, const float *inp, const float *gamma, const float *beta, int B, int C,
                       int HW, int groups, float eps, int silu);
void attention_forward(float *out, const float *q, const float *k, const float *v, int B, int C, int HW,
                       int heads);
void upsample_forward(float *out, const float *inp, int B, int C, int H, int W);
void concat_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb, int HW);

/* Runs one node: vals[id] are the value buffers (B * numel each), weights[pid] the params. */
void cpu_node_forward(const ddpm_graph *g, const ddpm_node *n, float *const *vals,
                      const float *const *weights, int B);

/* The whole U-Net: x (B, Cin, S, S), t (B) -> out (B, Cout, S, S). Allocates its activations. */
ddpm_result cpu_unet_forward(const ddpm_graph *g, const float *const *weights, int B, const float *x,
                             const float *t, float *out);

#endif
