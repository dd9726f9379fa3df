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
/* The statistics of one group of n floats as groupnorm_forward takes them: mean and 1 / sqrt(var + eps)
 * (biased variance). */
void groupnorm_stats(float *mean, float *rstd, const float *x, int64_t n, float eps);
void attention_forward(float *out, const float *q, const float *k, const float *v, int B, int C, int HW,
                       int heads);
/* softmax of each of the rows of P (rows x n, n >= 1), in place */
void softmax_rows(float *P, int rows, int n);
void upsample_forward(float *out, const float *inp, int B, int C, int H, int W);
void concat_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb, int HW);

/* ---- backward (training): llm.c style. Every gradient argument ACCUMULATES (+=); a NULL gradient is
 * not wanted and not computed. Saved inputs are the forward's inputs; OpenMP splits work by the gradient
 * written, so no atomics. Shapes as in the forward. */
void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                     int B, int K, int M);
void silu_backward(float *dinp, const float *dout, const float *inp, int64_t n);
/* out = (conv(inp, w) + b + temb + res) * scale: dtemb (B,Co) gets dout * scale summed over pixels,
 * dres (B,Co,Ho,Wo) gets dout * scale. Convolution as GEMM: dW += G im2col^T, dinp += col2im(W^T G). */
void conv2d_backward(float *dinp, float *dw, float *db, float *dtemb, float *dres, const float *dout,
                     const float *inp, const float *w, float scale, int B, int Ci, int H, int W, int Co,
                     int k, int stride, int pt, int pl, int pb, int pr);
/* conv2d_forward computed as GEMMs on im2col chunks (cpu_sgemm): the training forward's convolution. */
void conv2d_forward_gemm(float *out, const float *inp, const float *w, const float *b, const float *temb,
                         const float *res, float scale, int B, int Ci, int H, int W, int Co, int k,
                         int stride, int pt, int pl, int pb, int pr);
/* Stride-1 convolution without im2col (conv_direct.c), on AVX-512 or AVX2+FMA kernels picked at run time.
 * conv2d_direct_forward is conv2d_forward at stride 1; with winograd it may take Winograd's transform
 * (training: faster at large batches, but whether it does depends on the batch, so an image's rounding
 * would too; conv2d_forward passes 0). conv2d_direct_backward adds conv2d_backward's dinp and dw (either
 * may be NULL). Both return 0 when they did nothing (no such CPU, shape, or memory) and the caller takes
 * the im2col path; conv2d_direct_backward returns -1 when it added dw but not dinp. */
int conv2d_direct_forward(float *out, const float *inp, const float *w, const float *b, const float *temb,
                          const float *res, float scale, int B, int Ci, int H, int W, int Co, int k, int pt,
                          int pl, int pb, int pr, int winograd);
int conv2d_direct_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           float scale, int B, int Ci, int H, int W, int Co, int k, int pt, int pl, int pb,
                           int pr);
/* GroupNorm (with the fused SiLU when silu): statistics recomputed from inp; out is the forward's output
 * (optional: with it the SiLU derivative needs no exp). */
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *out, const float *gamma, const float *beta, int B, int C, int HW,
                        int groups, float eps, int silu);
/* attention_forward as two GEMMs per (batch item, head): the training forward's attention. probs (B, heads,
 * HW, HW) receives the softmax for attention_backward; NULL: attention_forward (blocks of query rows). */
void attention_forward_gemm(float *out, float *probs, const float *q, const float *k, const float *v, int B,
                            int C, int HW, int heads);
/* probs: the forward's softmax (attention_forward_gemm's), or NULL to recompute it per (batch item, head).
 * Scratch: HW x HW matrices per thread, one with probs, two without (cpu_scratch slots 1, 0). */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs,
                        const float *q, const float *k, const float *v, int B, int C, int HW, int heads);
void upsample_backward(float *dinp, const float *dout, int B, int C, int H, int W);
void concat_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb, int HW);

/* Scratch memory of the calling thread for the ops' temporaries: slot s (0 <= s < CPU_SCRATCH_SLOTS) is a
 * block of at least `bytes`, 64-byte aligned, contents undefined; NULL when out of memory (callers fall
 * back to a path without scratch). Grow-only: the block stays with the thread for its next request, so
 * repeated ops allocate nothing. Valid until this thread asks for the same slot again or releases; threads
 * of a parallel region the caller opens may use it meanwhile. An op uses slots 0, 1, ... and never calls
 * another op that uses scratch while it holds some. The blocks are freed at thread exit or by
 * cpu_scratch_release (the calling thread's only: no other thread may be using them). */
#define CPU_SCRATCH_SLOTS 4
void *cpu_scratch(int slot, size_t bytes);
void cpu_scratch_release(void);

/* C (M,N) = alpha op(A) op(B) + beta C, row-major; op(A) is (M,K) (A is (K,M) when transa), op(B) is
 * (K,N) (B is (N,K) when transb). OpenBLAS's cblas when built with it, else a blocked C loop; threads
 * inside (OpenBLAS's or OpenMP): call it from serial code. */
void cpu_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
/* "cblas" or "portable": what cpu_sgemm runs on. */
const char *cpu_sgemm_backend(void);

/* Runs one node: vals[id] are the value buffers (B * numel each), weights[pid] the params. */
void cpu_node_forward(const ddpm_graph *g, const ddpm_node *n, float *const *vals,
                      const float *const *weights, int B);

/* The whole U-Net: x (B, Cin, S, S), t (B) -> out (B, Cout, S, S). Allocates its activations. */
ddpm_result cpu_unet_forward(const ddpm_graph *g, const float *const *weights, int B, const float *x,
                             const float *t, float *out);

#endif
