/* sampler.c: the reverse process: a plan (timesteps + per-step coefficients reproducing diffusers'
 * DDPMScheduler.step / DDIMScheduler.step), the generic CPU update, the CPU backend and ddpm_sample. */
#include "sampler.h"

#include "cpu/cpu.h"
#include "rng.h"
#include "schedule.h"
#include "shared.h"
#include "vk/vk.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DDIM_DEFAULT_STEPS 50
#define CPU_CHUNK_IMAGES 16                  /* images per U-Net call: bounds the activation memory */
#define MAX_SAMPLE_FLOATS (INT64_C(1) << 32) /* n * C * H * W above this (16 GiB) is refused */

void ddpm_sample_opts_default(ddpm_sample_opts *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->sampler = DDPM_SAMPLER_DDPM;
    o->steps = 0;
    o->eta = 0.0f;
    o->spacing = DDPM_SPACING_DEFAULT;
    o->variance = -1;
    o->clip_sample = -1;
    o->seed = 0;
    o->n = 1;
    o->first_index = 0;
}

/* ---- the plan ---------------------------------------------------------------------------------- */

/* The step a diffusers scheduler steps to. diffusers' DDPMScheduler.previous_timestep and
 * DDIMScheduler.step both use t - T // S (not the next planned timestep) for their own spacings; with
 * leading spacing that is the next timestep, with trailing / linspace spacing it can differ from it by
 * one or more, and diffusers still uses it. The DDIM paper's code (uniform, quad) steps to the next
 * timestep of its sequence, or -1 after the last. */
static int prev_timestep(ddpm_spacing spacing, const int *ts, int i, int S, int T)
{
    if (spacing == DDPM_SPACING_UNIFORM || spacing == DDPM_SPACING_QUAD)
        return i + 1 < S ? ts[i + 1] : -1;
    return ts[i] - T / S;
}

void sampler_plan_free(sampler_plan *p)
{
    if (!p)
        return;
    free(p->timesteps);
    free(p->coef);
    p->timesteps = NULL;
    p->coef = NULL;
    p->n_steps = 0;
}

ddpm_result sampler_plan_make(const ddpm_schedule_config *s, const ddpm_sample_opts *o, sampler_plan *p)
{
    ddpm_result res = DDPM_OK;
    double *betas = NULL, *acp = NULL;
    if (!s || !o || !p)
        return ddpm_fail(DDPM_ERR_ARG, "sampler_plan_make: NULL argument");
    memset(p, 0, sizeof *p);
    TRY(schedule_config_validate(s));
    const int T = s->num_train_timesteps;

    if (o->sampler != DDPM_SAMPLER_DDPM && o->sampler != DDPM_SAMPLER_DDIM)
        return ddpm_fail(DDPM_ERR_ARG, "unknown sampler %d (0 = ddpm, 1 = ddim)", (int)o->sampler);
    if ((unsigned)o->spacing > DDPM_SPACING_LINSPACE)
        return ddpm_fail(DDPM_ERR_ARG, "unknown timestep spacing %d", (int)o->spacing);
    if (!(o->eta >= 0.0f && o->eta <= 1.0f))
        return ddpm_fail(DDPM_ERR_ARG, "eta %g must be in [0, 1]", (double)o->eta);
    if (o->variance < -1 || o->variance > 1)
        return ddpm_fail(DDPM_ERR_ARG,
                         "variance %d must be -1 (model default), 0 (fixed_small) or 1 (fixed_large)",
                         o->variance);
    if (o->clip_sample < -1 || o->clip_sample > 1)
        return ddpm_fail(DDPM_ERR_ARG, "clip_sample %d must be -1 (model default), 0 or 1", o->clip_sample);
    int S = o->steps;
    if (S == 0) /* defaults: every training step for ddpm, 50 (at most T) for ddim */
        S = o->sampler == DDPM_SAMPLER_DDPM ? T : (T < DDIM_DEFAULT_STEPS ? T : DDIM_DEFAULT_STEPS);
    if (S < 1 || S > T)
        return ddpm_fail(DDPM_ERR_ARG, "steps %d out of range 1..%d (the model's num_train_timesteps)",
                         o->steps, T);
    const int fixed_large = o->variance == -1 ? s->variance_type == VAR_FIXED_LARGE : o->variance == 1;
    const int clip = o->clip_sample == -1 ? s->clip_sample : o->clip_sample;
    const double eta = o->eta;

    betas = malloc(sizeof(double) * (size_t)T);
    acp = malloc(sizeof(double) * (size_t)T);
    p->timesteps = malloc(sizeof(int) * (size_t)S);
    p->coef = calloc((size_t)S * DDPM_COEF_STRIDE, sizeof(float));
    if (!betas || !acp || !p->timesteps || !p->coef) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "out of memory for a plan of %d steps (T = %d)", S, T);
        goto cleanup;
    }
    p->n_steps = S;
    TRY(schedule_betas(s, betas));
    schedule_alphas_cumprod(betas, T, acp);
    TRY(schedule_timesteps(s, o->sampler, o->spacing, S, p->timesteps));

    for (int i = 0; i < S; i++) {
        const int t = p->timesteps[i];
        const int prev = prev_timestep(o->spacing, p->timesteps, i, S, T);
        const double apt = acp[t], bpt = 1.0 - apt;
        double app;
        if (prev >= 0)
            app = acp[prev];
        else if (o->sampler == DDPM_SAMPLER_DDPM)
            app = 1.0; /* DDPMScheduler: self.one */
        else
            app = s->set_alpha_to_one ? 1.0 : acp[0]; /* DDIMScheduler: final_alpha_cumprod */
        const double bpp = 1.0 - app;
        const double sa = sqrt(apt), sb = sqrt(bpt);
        double c[DDPM_COEF_STRIDE] = {0};

        /* x0 from the model output (the same in both schedulers) */
        switch (s->prediction_type) {
        case PRED_EPSILON: /* (x - sqrt(1 - apt) eps) / sqrt(apt) */
            c[DDPM_COEF_P0] = 1.0 / sa;
            c[DDPM_COEF_Q0] = -sb / sa;
            break;
        case PRED_SAMPLE:
            c[DDPM_COEF_P0] = 0.0;
            c[DDPM_COEF_Q0] = 1.0;
            break;
        case PRED_V: /* sqrt(apt) x - sqrt(1 - apt) v */
            c[DDPM_COEF_P0] = sa;
            c[DDPM_COEF_Q0] = -sb;
            break;
        }
        c[DDPM_COEF_CLIP] = clip ? s->clip_sample_range : 0.0;
        c[DDPM_COEF_T] = (double)t;

        if (o->sampler == DDPM_SAMPLER_DDPM) {
            /* DDPMScheduler.step: posterior mean from the (clipped) x0 and x; no noise at t == 0 */
            const double cur_alpha = apt / app, cur_beta = 1.0 - cur_alpha;
            c[DDPM_COEF_A] = sqrt(app) * cur_beta / bpt;
            c[DDPM_COEF_C] = sqrt(cur_alpha) * bpp / bpt;
            double var = fixed_large ? cur_beta : fmax(bpp / bpt * cur_beta, 1e-20);
            c[DDPM_COEF_SIGMA] = t > 0 ? sqrt(var) : 0.0;
        } else {
            /* DDIMScheduler.step: eps from the unclipped model output (use_clipped_model_output false,
             * so R1 = 0), x' = sqrt(app) x0 + sqrt(1 - app - std^2) eps + std z */
            switch (s->prediction_type) {
            case PRED_EPSILON:
                c[DDPM_COEF_P1] = 0.0;
                c[DDPM_COEF_Q1] = 1.0;
                break;
            case PRED_SAMPLE: /* (x - sqrt(apt) out) / sqrt(1 - apt) */
                c[DDPM_COEF_P1] = 1.0 / sb;
                c[DDPM_COEF_Q1] = -sa / sb;
                break;
            case PRED_V: /* sqrt(apt) v + sqrt(1 - apt) x */
                c[DDPM_COEF_P1] = sb;
                c[DDPM_COEF_Q1] = sa;
                break;
            }
            c[DDPM_COEF_R1] = 0.0;
            const double variance = bpp / bpt * (1.0 - apt / app);
            const double std = eta * sqrt(fmax(variance, 0.0));
            c[DDPM_COEF_A] = sqrt(app);
            c[DDPM_COEF_B] = sqrt(fmax(1.0 - app - std * std, 0.0)); /* >= 0 exactly; guards rounding */
            c[DDPM_COEF_SIGMA] = eta > 0.0 ? std : 0.0;
        }
        for (int k = 0; k < DDPM_COEF_STRIDE; k++) {
            if (!isfinite(c[k])) {
                res = ddpm_fail(DDPM_ERR_MODEL, "schedule gives a non-finite coefficient %d at timestep %d",
                                k, t);
                goto cleanup;
            }
            p->coef[(size_t)i * DDPM_COEF_STRIDE + k] = (float)c[k];
        }
    }

cleanup:
    free(betas);
    free(acp);
    if (res != DDPM_OK)
        sampler_plan_free(p);
    return res;
}

/* ---- the generic update on the CPU --------------------------------------------------------------- */

void update_cpu(float *x_out, const float *x, const float *model_out, const float *coef_row,
                int64_t per_image, int n_images, int first_image, uint32_t step, uint64_t seed)
{
    const float P0 = coef_row[DDPM_COEF_P0], Q0 = coef_row[DDPM_COEF_Q0];
    const float P1 = coef_row[DDPM_COEF_P1], Q1 = coef_row[DDPM_COEF_Q1], R1 = coef_row[DDPM_COEF_R1];
    const float A = coef_row[DDPM_COEF_A], B = coef_row[DDPM_COEF_B], C = coef_row[DDPM_COEF_C];
    const float sigma = coef_row[DDPM_COEF_SIGMA], clip = coef_row[DDPM_COEF_CLIP];
    const int64_t blocks = (per_image + 3) / 4; /* one Philox block gives the noise of 4 elements */
    const int64_t total = blocks * n_images;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (total > 16384)
#endif
    for (int64_t j = 0; j < total; j++) {
        const int64_t img = j / blocks, blk = j % blocks;
        float z[4] = {0, 0, 0, 0};
        if (sigma != 0.0f)
            rng_normal4((uint32_t)blk, (uint32_t)(first_image + img), step, seed, z);
        const int64_t e0 = blk * 4, left = per_image - e0;
        const int cnt = left < 4 ? (int)left : 4;
        const int64_t off = img * per_image + e0;
        for (int q = 0; q < cnt; q++) {
            const float xv = x[off + q], ov = model_out[off + q];
            float x0 = P0 * xv + Q0 * ov;
            if (clip != 0.0f)
                x0 = fminf(fmaxf(x0, -clip), clip);
            const float eps = P1 * xv + Q1 * ov + R1 * x0;
            x_out[off + q] = A * x0 + B * eps + C * xv + sigma * z[q];
        }
    }
}

/* ---- the CPU backend ----------------------------------------------------------------------------- */

typedef struct cpu_backend {
    backend base;
    const ddpm_model *m;
    const sampler_plan *p;
    int n, first;
    uint64_t seed;
    int64_t per_image;
    int chunk;    /* images per U-Net call */
    float *x;     /* (n, C, H, W): the state */
    float *out;   /* (chunk, C, H, W): the model output of one chunk */
    float *tvals; /* (chunk): the timestep of every item */
} cpu_backend;

ddpm_result sampler_check_batch(const ddpm_model *m, const ddpm_sample_opts *o, int64_t *per_image)
{
    const ddpm_unet_config *c = &m->config;
    if (c->in_channels != c->out_channels)
        return ddpm_fail(
            DDPM_ERR_UNSUPPORTED,
            "model has %d input and %d output channels; sampling needs them equal (learned variance "
            "is not supported)",
            c->in_channels, c->out_channels);
    if (c->in_channels < 1 || c->sample_size < 1)
        return ddpm_fail(DDPM_ERR_MODEL, "model image shape %d x %d x %d is empty", c->in_channels,
                         c->sample_size, c->sample_size);
    if (o->n < 1)
        return ddpm_fail(DDPM_ERR_ARG, "number of images %d must be >= 1", o->n);
    if (o->first_index < 0)
        return ddpm_fail(DDPM_ERR_ARG, "first image index %d must be >= 0", o->first_index);
    /* image indices (a Philox counter word) are ints throughout: the last must not overflow */
    if ((int64_t)o->first_index + o->n - 1 > (int64_t)INT32_MAX)
        return ddpm_fail(DDPM_ERR_ARG, "image indices %d..%lld exceed 2^31 - 1", o->first_index,
                         (long long)o->first_index + o->n - 1);
    int64_t per, total;
    if (!ddpm_mul_ok((int64_t)c->in_channels * c->sample_size, c->sample_size, &per) ||
        !ddpm_mul_ok(per, o->n, &total) || total > MAX_SAMPLE_FLOATS)
        return ddpm_fail(DDPM_ERR_NOMEM, "%d images of %d x %d x %d are too many floats (limit 2^32)", o->n,
                         c->in_channels, c->sample_size, c->sample_size);
    *per_image = per;
    return DDPM_OK;
}

static ddpm_result cpu_start(backend *b, const float *init)
{
    cpu_backend *cb = (cpu_backend *)b;
    if (init)
        memcpy(cb->x, init, sizeof(float) * (size_t)(cb->per_image * cb->n));
    else
        rng_normal_fill(cb->x, cb->per_image, cb->n, cb->first, DDPM_NOISE_STEP_INIT, cb->seed);
    return DDPM_OK;
}

static ddpm_result cpu_step(backend *b, int i)
{
    cpu_backend *cb = (cpu_backend *)b;
    if (i < 0 || i >= cb->p->n_steps)
        return ddpm_fail(DDPM_ERR_ARG, "step %d out of range 0..%d", i, cb->p->n_steps - 1);
    const float *row = cb->p->coef + (size_t)i * DDPM_COEF_STRIDE;
    for (int img = 0; img < cb->n; img += cb->chunk) {
        const int B = cb->n - img < cb->chunk ? cb->n - img : cb->chunk;
        float *x = cb->x + (int64_t)img * cb->per_image;
        for (int k = 0; k < B; k++)
            cb->tvals[k] = row[DDPM_COEF_T];
        ddpm_result r =
            cpu_unet_forward(&cb->m->graph, (const float *const *)cb->m->weights, B, x, cb->tvals, cb->out);
        if (r != DDPM_OK)
            return r;
        update_cpu(x, x, cb->out, row, cb->per_image, B, cb->first + img, (uint32_t)i, cb->seed);
    }
    return DDPM_OK;
}

static ddpm_result cpu_finish(backend *b, float *out)
{
    cpu_backend *cb = (cpu_backend *)b;
    memcpy(out, cb->x, sizeof(float) * (size_t)(cb->per_image * cb->n));
    return DDPM_OK;
}

static void cpu_destroy(backend *b)
{
    cpu_backend *cb = (cpu_backend *)b;
    if (!cb)
        return;
    free(cb->x);
    free(cb->out);
    free(cb->tvals);
    free(cb);
}

ddpm_result cpu_backend_create(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                               backend **out)
{
    if (!m || !p || !o || !out)
        return ddpm_fail(DDPM_ERR_ARG, "cpu_backend_create: NULL argument");
    *out = NULL;
    int64_t per;
    ddpm_result r = sampler_check_batch(m, o, &per);
    if (r != DDPM_OK)
        return r;
    cpu_backend *cb = ddpm_calloc(1, sizeof *cb);
    if (!cb)
        return DDPM_ERR_NOMEM;
    cb->base.name = "cpu";
    cb->base.start = cpu_start;
    cb->base.step = cpu_step;
    cb->base.finish = cpu_finish;
    cb->base.destroy = cpu_destroy;
    cb->m = m;
    cb->p = p;
    cb->n = o->n;
    cb->first = o->first_index;
    cb->seed = o->seed;
    cb->per_image = per;
    cb->chunk = o->n < CPU_CHUNK_IMAGES ? o->n : CPU_CHUNK_IMAGES;
    cb->x = ddpm_calloc((size_t)(per * o->n), sizeof(float));
    cb->out = cb->x ? ddpm_calloc((size_t)(per * cb->chunk), sizeof(float)) : NULL;
    cb->tvals = cb->out ? ddpm_calloc((size_t)cb->chunk, sizeof(float)) : NULL;
    if (!cb->tvals) {
        cpu_destroy(&cb->base);
        return DDPM_ERR_NOMEM;
    }
    *out = &cb->base;
    return DDPM_OK;
}

/* ---- ddpm_sample ------------------------------------------------------------------------------------ */

static void log_msg(const ddpm_sample_opts *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void log_msg(const ddpm_sample_opts *o, const char *fmt, ...)
{
    if (!o->log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    o->log(o->user, buf);
}

static int is_cpu_spec(const char *spec)
{
    const char *w = "cpu";
    for (; *w; w++, spec++)
        if (*spec == '\0' || (*spec | 0x20) != *w)
            return 0;
    return *spec == '\0';
}

/* device "cpu" -> CPU; NULL -> $DDPM_DEVICE, else the best Vulkan GPU, else the CPU (a CPU-type Vulkan
 * device such as lavapipe runs the same work several times slower than the CPU backend, so it is used
 * only when named); any other spec -> that Vulkan device or an error (never a silent CPU). */
static ddpm_result pick_backend(const ddpm_model *m, const sampler_plan *p, const ddpm_sample_opts *o,
                                backend **b)
{
    const char *spec = o->device;
    if (!spec || !*spec) {
        spec = getenv("DDPM_DEVICE");
        if (spec && !*spec)
            spec = NULL;
    }
    if (spec && is_cpu_spec(spec))
        return cpu_backend_create(m, p, o, b);
    if (spec)
        return vk_backend_create(m, p, o, spec, b);
    ddpm_result r = vk_backend_create(m, p, o, "gpu", b);
    if (r != DDPM_ERR_NO_DEVICE)
        return r;
    log_msg(o, "%s; running on the CPU backend", ddpm_last_error());
    return cpu_backend_create(m, p, o, b);
}

ddpm_result ddpm_sample(const ddpm_model *m, const ddpm_sample_opts *o, float *out)
{
    ddpm_result res = DDPM_OK;
    sampler_plan plan = {0};
    backend *b = NULL;
    int64_t per;
    if (!m || !o || !out)
        return ddpm_fail(DDPM_ERR_ARG, "ddpm_sample: NULL %s", !m ? "model" : !o ? "options" : "output");
    TRY(sampler_check_batch(m, o, &per));
    TRY(sampler_plan_make(&m->schedule, o, &plan));
    TRY(pick_backend(m, &plan, o, &b));
    log_msg(o, "sampling %d image%s with %s, %d steps, on %s", o->n, o->n == 1 ? "" : "s",
            o->sampler == DDPM_SAMPLER_DDPM ? "ddpm" : "ddim", plan.n_steps, b->name ? b->name : "?");
    TRY(b->start(b, o->init));
    for (int i = 0; i < plan.n_steps; i++) {
        TRY(b->step(b, i));
        if (o->progress && o->progress(o->user, i + 1, plan.n_steps) != 0) {
            res = ddpm_fail(DDPM_ERR_ARG, "sampling cancelled by the progress callback after step %d of %d",
                            i + 1, plan.n_steps);
            goto cleanup;
        }
    }
    TRY(b->finish(b, out));
cleanup:
    if (b)
        b->destroy(b);
    sampler_plan_free(&plan);
    return res;
}
