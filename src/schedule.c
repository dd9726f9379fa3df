/* schedule.c: beta schedules in double precision (the formulas of diffusers' DDPMScheduler and of the
 * DDPM paper's code) and the inference timesteps for every spacing (diffusers and the DDIM paper's code). */
#include "schedule.h"

#include <math.h>
#include <stdlib.h>

/* torch.linspace's scalar formula: the first half counts up from start, the second half down from end,
 * so both ends are exact. Used where diffusers calls torch.linspace. */
static double torch_linspace(double start, double end, int n, int i)
{
    if (n == 1)
        return start;
    double step = (end - start) / (double)(n - 1);
    return i < n / 2 ? start + step * (double)i : end - step * (double)(n - 1 - i);
}

/* numpy.linspace's formula: i * step + start, with the last element set to stop. Used where the
 * DDPM / DDIM papers' code calls np.linspace. */
static double numpy_linspace(double start, double stop, int n, int i)
{
    if (n == 1)
        return start;
    if (i == n - 1)
        return stop;
    double step = (stop - start) / (double)(n - 1);
    return (double)i * step + start;
}

/* Glide's cosine alpha_bar (diffusers betas_for_alpha_bar, "cosine"): cos((t + 0.008) / 1.008 * pi / 2)^2 */
static double alpha_bar_cosine(double t)
{
    double c = cos((t + 0.008) / 1.008 * M_PI / 2.0);
    return c * c;
}

ddpm_result schedule_betas(const ddpm_schedule_config *s, double *betas)
{
    ddpm_result r = schedule_config_validate(s);
    if (r != DDPM_OK)
        return r;
    const int T = s->num_train_timesteps;
    const double bs = s->beta_start, be = s->beta_end;
    for (int i = 0; i < T; i++) {
        double b = 0.0;
        switch (s->beta_schedule) {
        case BETA_LINEAR: /* diffusers: torch.linspace(beta_start, beta_end, T) */
            b = torch_linspace(bs, be, T, i);
            break;
        case BETA_SCALED_LINEAR: { /* diffusers: torch.linspace(sqrt(bs), sqrt(be), T) ** 2 */
            double v = torch_linspace(sqrt(bs), sqrt(be), T, i);
            b = v * v;
            break;
        }
        case BETA_QUAD: { /* not in diffusers' DDPMScheduler; the DDPM paper's code (get_beta_schedule):
                             np.linspace(bs ** 0.5, be ** 0.5, T, dtype=np.float64) ** 2 */
            double v = numpy_linspace(sqrt(bs), sqrt(be), T, i);
            b = v * v;
            break;
        }
        case BETA_SQUAREDCOS_CAP_V2: { /* diffusers: betas_for_alpha_bar(T), max_beta 0.999 */
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            b = fmin(1.0 - alpha_bar_cosine(t2) / alpha_bar_cosine(t1), 0.999);
            break;
        }
        case BETA_SIGMOID: { /* diffusers: sigmoid(torch.linspace(-6, 6, T)) * (be - bs) + bs */
            double x = torch_linspace(-6.0, 6.0, T, i);
            b = 1.0 / (1.0 + exp(-x)) * (be - bs) + bs;
            break;
        }
        }
        if (!(b > 0.0 && b < 1.0))
            return ddpm_fail(DDPM_ERR_MODEL, "scheduler: beta[%d] = %g is outside (0, 1)", i, b);
        betas[i] = b;
    }
    return DDPM_OK;
}

void schedule_alphas_cumprod(const double *betas, int T, double *acp)
{
    double p = 1.0;
    for (int i = 0; i < T; i++) {
        p *= 1.0 - betas[i];
        acp[i] = p;
    }
}

ddpm_result schedule_timesteps(const ddpm_schedule_config *s, ddpm_sampler_kind kind, ddpm_spacing spacing,
                               int S, int *ts)
{
    const int T = s->num_train_timesteps;
    if (T < 1)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: num_train_timesteps %d must be >= 1", T);
    if (S < 1 || S > T)
        return ddpm_fail(DDPM_ERR_ARG, "steps %d out of range 1..%d (num_train_timesteps)", S, T);
    if (kind != DDPM_SAMPLER_DDPM && kind != DDPM_SAMPLER_DDIM)
        return ddpm_fail(DDPM_ERR_ARG, "unknown sampler %d", (int)kind);
    if (spacing == DDPM_SPACING_DEFAULT) {
        if (kind == DDPM_SAMPLER_DDPM && S == T) {
            /* diffusers' DDPMScheduler without set_timesteps: every training step, no steps_offset */
            for (int i = 0; i < S; i++)
                ts[i] = T - 1 - i;
            return DDPM_OK;
        }
        spacing = DDPM_SPACING_LEADING;
    }
    /* Fill in ascending order of the generating formula, then reverse. */
    switch (spacing) {
    case DDPM_SPACING_UNIFORM: /* DDIM code: range(0, T, T // S); only its first S when S does not divide T */
        for (int i = 0; i < S; i++)
            ts[i] = i * (T / S);
        break;
    case DDPM_SPACING_QUAD: { /* DDIM code: int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2 */
        double top = sqrt((double)T * 0.8);
        for (int i = 0; i < S; i++) {
            double v = numpy_linspace(0.0, top, S, i);
            ts[i] = (int)(v * v); /* Python int(): truncation toward zero */
        }
        break;
    }
    case DDPM_SPACING_LEADING: /* diffusers: arange(S) * (T // S) + steps_offset */
        for (int i = 0; i < S; i++)
            ts[i] = i * (T / S) + s->steps_offset;
        break;
    case DDPM_SPACING_TRAILING: {
        /* diffusers: np.round(np.arange(T, 0, -T / S)) - 1, descending. numpy's arange stores start and
         * start + step, then fills start + i * ((start + step) - start). When float rounding makes that
         * range one longer than S, diffusers gets an extra final timestep -1; only the first S are used. */
        double ratio = (double)T / (double)S, start = (double)T;
        double d = (start - ratio) - start;
        for (int i = 0; i < S; i++) {
            double v = i == 0 ? start : i == 1 ? start - ratio : start + (double)i * d;
            ts[S - 1 - i] = (int)nearbyint(v) - 1; /* np.round: half to even */
        }
        break;
    }
    case DDPM_SPACING_LINSPACE: /* diffusers: np.linspace(0, T - 1, S).round() */
        for (int i = 0; i < S; i++)
            ts[i] = (int)nearbyint(numpy_linspace(0.0, (double)(T - 1), S, i));
        break;
    default: return ddpm_fail(DDPM_ERR_ARG, "unknown timestep spacing %d", (int)spacing);
    }
    for (int i = 0, j = S - 1; i < j; i++, j--) {
        int tmp = ts[i];
        ts[i] = ts[j];
        ts[j] = tmp;
    }
    for (int i = 0; i < S; i++) {
        if (ts[i] < 0 || ts[i] >= T)
            return ddpm_fail(DDPM_ERR_ARG, "timestep spacing gives timestep %d outside 0..%d (steps %d)",
                             ts[i], T - 1, S);
        if (i > 0 && ts[i] >= ts[i - 1])
            return ddpm_fail(DDPM_ERR_ARG,
                             "timestep spacing with %d steps of %d repeats timestep %d; use fewer steps or "
                             "another spacing",
                             S, T, ts[i]);
    }
    return DDPM_OK;
}
