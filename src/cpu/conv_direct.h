/* conv_direct.h: what conv_direct.c shares with conv_winograd.c (x86-64 with GCC or clang only). */
#ifndef DDPM_CPU_CONV_DIRECT_H
#define DDPM_CPU_CONV_DIRECT_H

#include <stddef.h>
#include <stdint.h>

/* Multiply-adds below which a call stays on one thread. */
#define DCONV_PARALLEL_MIN ((int64_t)1 << 20)

/* One instruction set's kernels (conv_direct_kernels.h): vl floats per vector; the forward computes fr
 * output channels x fp vectors of pixels, the weight gradient wr output channels x 9 input streams. */
typedef struct dconv_isa {
    int vl, fr, fp, wr;
    void (*fwd)(const float *xp, size_t cs, int cin, const int *offs, int taps, const float *wp, float *y,
                size_t ys);
    void (*dw)(const float *const *g, const float *x, const size_t *xoff, int nimg, size_t gstride,
               size_t xstride, int nv, float *sums);
} dconv_isa;

/* The 3x3 forward by Winograd F(2x2, 3x3) on AVX-512 (conv_winograd.c), same contract as conv_direct.c's
 * dconv_forward: returns 0 when it did nothing (shape not worth it, no AVX-512 build, out of memory). */
int dconv_winograd(const dconv_isa *isa, float *out, const float *x, const float *w, int flip,
                   const float *bias, const float *temb, const float *res, float scale, int accumulate, int B,
                   int Ci, int H, int W, int Co, int pt, int pl, int pb, int pr);

/* The 3x3 weight gradient by the same transform (conv_winograd.c), contract of conv_direct.c's dconv_dweight.
 */
int dconv_winograd_dweight(const dconv_isa *isa, float *dw, const float *dout, const float *x, float scale,
                           int B, int Ci, int H, int W, int Co, int pt, int pl, int pb, int pr);

#endif
