/* adamw.c: the AdamW update and gradient clipping of ddpm-train, written to reproduce
 * torch.optim.AdamW (single-tensor path) and clip_grad_norm_ step for step. */
#include "adamw.h"

#include <math.h>

#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, const adamw_opts *o)
{
    const float decay = (float)(1.0 - o->lr * o->weight_decay);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    const float a1 = (float)(1.0 - o->beta1), a2 = (float)(1.0 - o->beta2);
    const double bc1 = 1.0 - pow(o->beta1, (double)step);
    const double bc2 = 1.0 - pow(o->beta2, (double)step);
    const float step_size = (float)(o->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)o->eps;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float mi = m[i] * b1 + a1 * g[i];
        float vi = v[i] * b2 + a2 * (g[i] * g[i]);
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

double grad_global_norm(const float *g, int64_t n)
{
    double s = 0;
    /* fixed chunks summed in order: the same value for any thread count */
    enum { CHUNK = 4096 };
    int64_t nc = (n + CHUNK - 1) / CHUNK;
    for (int64_t c = 0; c < nc; c++) {
        double part = 0;
        int64_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (int64_t i = c * CHUNK; i < end; i++)
            part += (double)g[i] * g[i];
        s += part;
    }
    return sqrt(s);
}

float grad_clip(float *g, int64_t n, double norm, double max_norm)
{
    if (max_norm <= 0)
        return 1.0f;
    float coef = (float)(max_norm / (norm + 1e-6));
    if (coef >= 1.0f)
        return 1.0f;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        g[i] *= coef;
    return coef;
}
