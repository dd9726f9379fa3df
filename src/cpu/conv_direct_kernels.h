/* conv_direct_kernels.h: the inner loops of conv_direct.c, included once per instruction set with
 *   DK_ATTR            function attribute (the target)        DK_SUFFIX   name suffix
 *   DK_V, DK_VL        vector type and its floats              DK_ZERO()   zero vector
 *   DK_LOAD(p)         unaligned load                          DK_BCAST(p) *p in every lane
 *   DK_FMA(a, b, c)    a * b + c                               DK_STORE(p, v), DK_SUM(v) (horizontal sum)
 *   DK_FR, DK_FP       forward block: DK_FR output channels x DK_FP vectors of pixels
 *   DK_WR              weight-gradient block: DK_WR output channels x DCONV_WM input streams
 * The blocks' accumulators stay in registers: the loops over them are fully unrolled. The parameters are
 * undefined at the end. */

#define DK_CAT2(a, b) a##b
#define DK_CAT(a, b) DK_CAT2(a, b)

/* y[r * ys + p * VL + l] = sum over ci < cin, t < taps of wp[(ci * taps + t) * FR + r] * xp[ci * cs + offs[t]
 * + p * VL + l]: FR output channels of FP * VL consecutive grid pixels. */
DK_ATTR static void DK_CAT(dconv_fwd_, DK_SUFFIX)(const float *xp, size_t cs, int cin, const int *offs,
                                                  int taps, const float *wp, float *y, size_t ys)
{
    DK_V acc[DK_FR][DK_FP];
#pragma GCC unroll 32
    for (int r = 0; r < DK_FR; r++)
#pragma GCC unroll 8
        for (int p = 0; p < DK_FP; p++)
            acc[r][p] = DK_ZERO();
    for (int ci = 0; ci < cin; ci++) {
        const float *xc = xp + (size_t)ci * cs;
        for (int t = 0; t < taps; t++, wp += DK_FR) {
            const float *xt = xc + offs[t];
            DK_V xv[DK_FP];
#pragma GCC unroll 8
            for (int p = 0; p < DK_FP; p++)
                xv[p] = DK_LOAD(xt + p * DK_VL);
#pragma GCC unroll 32
            for (int r = 0; r < DK_FR; r++) {
                DK_V w = DK_BCAST(wp + r);
#pragma GCC unroll 8
                for (int p = 0; p < DK_FP; p++)
                    acc[r][p] = DK_FMA(w, xv[p], acc[r][p]);
            }
        }
    }
#pragma GCC unroll 32
    for (int r = 0; r < DK_FR; r++)
#pragma GCC unroll 8
        for (int p = 0; p < DK_FP; p++)
            DK_STORE(y + (size_t)r * ys + (size_t)p * DK_VL, acc[r][p]);
}

/* sums[r * WM + m] = sum over images i < nimg and floats j < nv * VL of g[r][i * gstride + j] *
 * x[i * xstride + xoff[m] + j]: WR output channels' gradient rows against WM shifted input streams. */
DK_ATTR static void DK_CAT(dconv_dw_, DK_SUFFIX)(const float *const *g, const float *x, const size_t *xoff,
                                                 int nimg, size_t gstride, size_t xstride, int nv,
                                                 float *sums)
{
    DK_V acc[DK_WR][DCONV_WM];
#pragma GCC unroll 8
    for (int r = 0; r < DK_WR; r++)
#pragma GCC unroll 16
        for (int m = 0; m < DCONV_WM; m++)
            acc[r][m] = DK_ZERO();
    for (int i = 0; i < nimg; i++) {
        const float *gi[DK_WR];
#pragma GCC unroll 8
        for (int r = 0; r < DK_WR; r++)
            gi[r] = g[r] + (size_t)i * gstride;
        const float *xi = x + (size_t)i * xstride;
        for (int v = 0; v < nv; v++) {
            size_t q = (size_t)v * DK_VL;
            DK_V gv[DK_WR];
#pragma GCC unroll 8
            for (int r = 0; r < DK_WR; r++)
                gv[r] = DK_LOAD(gi[r] + q);
#pragma GCC unroll 16
            for (int m = 0; m < DCONV_WM; m++) {
                DK_V xv = DK_LOAD(xi + xoff[m] + q);
                /* one load for the WR multiply-adds: GCC would otherwise fold it into each of them */
                __asm__("" : "+v"(xv));
#pragma GCC unroll 8
                for (int r = 0; r < DK_WR; r++)
                    acc[r][m] = DK_FMA(gv[r], xv, acc[r][m]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < DK_WR; r++)
#pragma GCC unroll 16
        for (int m = 0; m < DCONV_WM; m++)
            sums[r * DCONV_WM + m] = DK_SUM(acc[r][m]);
}

static const dconv_isa DK_CAT(dconv_isa_, DK_SUFFIX) = {
    .vl = DK_VL,
    .fr = DK_FR,
    .fp = DK_FP,
    .wr = DK_WR,
    .fwd = DK_CAT(dconv_fwd_, DK_SUFFIX),
    .dw = DK_CAT(dconv_dw_, DK_SUFFIX),
};

#undef DK_CAT
#undef DK_CAT2
/* the parameters go too, so the next instruction set defines its own */
#undef DK_ATTR
#undef DK_SUFFIX
#undef DK_V
#undef DK_VL
#undef DK_ZERO
#undef DK_LOAD
#undef DK_BCAST
#undef DK_FMA
#undef DK_STORE
#undef DK_SUM
#undef DK_FR
#undef DK_FP
#undef DK_WR
