/* test_sampler.c: schedules, timesteps and single DDPM / DDIM steps against the float64 PyTorch
 * reimplementation of diffusers (fixtures/sched.safetensors), DDIM(eta 1) == DDPM, CPU runs, bad options. */
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "schedule.h"
#include "shared.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static st_file fx;

/* A float64 fixture stored as hi + lo float32 pairs. */
static double *tensor_f64(const char *base, int64_t *n)
{
    char name[128];
    int64_t nh, nl;
    snprintf(name, sizeof name, "%s.hi", base);
    float *hi = test_tensor(&fx, name, &nh);
    snprintf(name, sizeof name, "%s.lo", base);
    float *lo = test_tensor(&fx, name, &nl);
    CHECK(nh == nl, "%s: hi/lo sizes differ", base);
    double *d = malloc(sizeof(double) * (size_t)nh);
    for (int64_t i = 0; i < nh; i++)
        d[i] = (double)hi[i] + (double)lo[i];
    free(hi);
    free(lo);
    *n = nh;
    return d;
}

/* |got - want| <= rtol |want| in double, printing the worst element. */
static void close_f64(const char *what, const double *got, const double *want, int64_t n, double rtol)
{
    double worst = 0;
    int64_t wi = 0;
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        double rel = fabs(got[i] - want[i]) / fabs(want[i]);
        if (!(rel <= rtol))
            ok = 0;
        if (!(rel <= worst)) {
            worst = rel;
            wi = i;
        }
    }
    CHECK(ok, "%s: worst relative error %.3g at [%lld] (got %.17g want %.17g)", what, worst, (long long)wi,
          n ? got[wi] : 0.0, n ? want[wi] : 0.0);
    printf("%s %s: n=%lld max rel err %.3g at [%lld] (rtol %.0e)\n", ok ? "ok  " : "FAIL", what, (long long)n,
           worst, (long long)wi, rtol);
}

static cJSON *meta_json(const char *key)
{
    const char *s = st_meta_get(&fx, key);
    if (!s) {
        fprintf(stderr, "FAIL fixture metadata %s missing\n", key);
        exit(1);
    }
    cJSON *j = cJSON_Parse(s);
    if (!j) {
        fprintf(stderr, "FAIL fixture metadata %s is not JSON\n", key);
        exit(1);
    }
    return j;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v)) {
        fprintf(stderr, "FAIL fixture case lacks string %s\n", k);
        exit(1);
    }
    return v->valuestring;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    if (!cJSON_IsNumber(v)) {
        fprintf(stderr, "FAIL fixture case lacks number %s\n", k);
        exit(1);
    }
    return v->valuedouble;
}

static ddpm_beta_kind beta_kind(const char *s)
{
    static const char *const names[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "quad", "sigmoid"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i]))
            return (ddpm_beta_kind)i;
    fprintf(stderr, "FAIL unknown beta schedule %s\n", s);
    exit(1);
}

static ddpm_spacing spacing_of(const char *s)
{
    static const char *const names[] = {"default", "uniform", "quad", "leading", "trailing", "linspace"};
    for (int i = 0; i < 6; i++)
        if (!strcmp(s, names[i]))
            return (ddpm_spacing)i;
    fprintf(stderr, "FAIL unknown spacing %s\n", s);
    exit(1);
}

static void test_betas(void)
{
    cJSON *cases = meta_json("betas");
    int count = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        for (int T = 1000; T >= 37; T = T == 1000 ? 37 : 0) {
            ddpm_schedule_config s;
            schedule_config_default(&s);
            s.beta_schedule = beta_kind(jstr(c, "beta_schedule"));
            s.beta_start = jnum(c, "beta_start");
            s.beta_end = jnum(c, "beta_end");
            s.num_train_timesteps = T;
            char name[96], what[128];
            int64_t n, na;
            snprintf(name, sizeof name, "betas.%s.%d", jstr(c, "beta_schedule"), T);
            double *want = tensor_f64(name, &n);
            snprintf(name, sizeof name, "acp.%s.%d", jstr(c, "beta_schedule"), T);
            double *want_acp = tensor_f64(name, &na);
            CHECK(n == T && na == T, "%s: %lld values, want %d", name, (long long)n, T);
            double *b = calloc((size_t)T, sizeof(double)), *acp = calloc((size_t)T, sizeof(double));
            ddpm_result r = schedule_betas(&s, b);
            CHECK(r == DDPM_OK, "schedule_betas %s T=%d: %s", jstr(c, "beta_schedule"), T, ddpm_last_error());
            schedule_alphas_cumprod(b, T, acp);
            snprintf(what, sizeof what, "betas %s T=%d", jstr(c, "beta_schedule"), T);
            close_f64(what, b, want, T, 1e-12);
            snprintf(what, sizeof what, "alphas_cumprod %s T=%d", jstr(c, "beta_schedule"), T);
            close_f64(what, acp, want_acp, T, 1e-12);
            free(b);
            free(acp);
            free(want);
            free(want_acp);
            count++;
        }
    }
    CHECK(count == 10, "expected 10 beta cases, got %d", count);
    cJSON_Delete(cases);
}

static void test_timesteps(void)
{
    cJSON *cases = meta_json("timesteps");
    int count = 0, refused = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        ddpm_schedule_config s;
        schedule_config_default(&s);
        s.num_train_timesteps = (int)jnum(c, "T");
        s.steps_offset = (int)jnum(c, "steps_offset");
        const int S = (int)jnum(c, "steps");
        const char *name = jstr(c, "name");
        ddpm_sampler_kind kind = strcmp(jstr(c, "sampler"), "ddpm") ? DDPM_SAMPLER_DDIM : DDPM_SAMPLER_DDPM;
        int *ts = calloc((size_t)S, sizeof(int));
        ddpm_result r = schedule_timesteps(&s, kind, spacing_of(jstr(c, "spacing")), S, ts);
        int64_t n;
        float *want = test_tensor(&fx, name, &n);
        if (jnum(c, "refused")) {
            CHECK(r == DDPM_ERR_ARG, "%s: repeated timesteps must be refused (got %s)", name,
                  ddpm_result_string(r));
            printf("ok   %s refused: %s\n", name, ddpm_last_error());
            refused++;
        } else {
            CHECK(r == DDPM_OK, "%s: %s", name, ddpm_last_error());
            CHECK(n == S, "%s: fixture has %lld timesteps", name, (long long)n);
            int bad = -1;
            for (int i = 0; i < S && i < n; i++)
                if (ts[i] != (int)want[i] && bad < 0)
                    bad = i;
            CHECK(bad < 0, "%s: timestep [%d] = %d, want %d", name, bad, bad >= 0 ? ts[bad] : 0,
                  bad >= 0 ? (int)want[bad] : 0);
            printf("%s %s: %d timesteps %d .. %d\n", bad < 0 ? "ok  " : "FAIL", name, S, ts[0], ts[S - 1]);
        }
        free(ts);
        free(want);
        count++;
    }
    CHECK(count >= 20 && refused >= 1, "timestep cases %d, refused %d", count, refused);
    cJSON_Delete(cases);
}

/* x' of the generic row (shaders/shared.h) with an explicit z. */
static void apply_row(float *y, const float *x, const float *o, const float *z, const float *c, int64_t n)
{
    for (int64_t e = 0; e < n; e++) {
        float x0 = c[DDPM_COEF_P0] * x[e] + c[DDPM_COEF_Q0] * o[e];
        if (c[DDPM_COEF_CLIP] != 0.0f)
            x0 = fminf(fmaxf(x0, -c[DDPM_COEF_CLIP]), c[DDPM_COEF_CLIP]);
        float eps = c[DDPM_COEF_P1] * x[e] + c[DDPM_COEF_Q1] * o[e] + c[DDPM_COEF_R1] * x0;
        y[e] = c[DDPM_COEF_A] * x0 + c[DDPM_COEF_B] * eps + c[DDPM_COEF_C] * x[e] + c[DDPM_COEF_SIGMA] * z[e];
    }
}

static void test_steps(void)
{
    int64_t n, n2, n3;
    float *x = test_tensor(&fx, "step.x", &n), *o = test_tensor(&fx, "step.out", &n2);
    float *z = test_tensor(&fx, "step.z", &n3);
    CHECK(n == 120 && n2 == n && n3 == n, "step inputs have %lld elements", (long long)n);
    float *y = malloc(sizeof(float) * (size_t)n), *y2 = malloc(sizeof(float) * (size_t)n);
    float *zr = malloc(sizeof(float) * (size_t)n), *yr = malloc(sizeof(float) * (size_t)n);
    const int64_t per = n / 2; /* two images of (3, 4, 5) */
    cJSON *cases = meta_json("steps");
    int count = 0, noisy = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        ddpm_schedule_config s;
        schedule_config_default(&s);
        s.beta_schedule = beta_kind(jstr(c, "beta_schedule"));
        s.beta_start = jnum(c, "beta_start");
        s.beta_end = jnum(c, "beta_end");
        const char *pred = jstr(c, "prediction_type");
        s.prediction_type = !strcmp(pred, "epsilon")  ? PRED_EPSILON
                            : !strcmp(pred, "sample") ? PRED_SAMPLE
                                                      : PRED_V;
        s.set_alpha_to_one = (int)jnum(c, "set_alpha_to_one");
        s.steps_offset = (int)jnum(c, "steps_offset");
        ddpm_sample_opts opt;
        ddpm_sample_opts_default(&opt);
        opt.sampler = strcmp(jstr(c, "sampler"), "ddpm") ? DDPM_SAMPLER_DDIM : DDPM_SAMPLER_DDPM;
        opt.steps = (int)jnum(c, "steps");
        opt.eta = (float)jnum(c, "eta");
        opt.spacing = spacing_of(jstr(c, "spacing"));
        opt.variance = strcmp(jstr(c, "variance_type"), "fixed_large") ? 0 : 1;
        opt.clip_sample = (int)jnum(c, "clip_sample");
        const int i = (int)jnum(c, "index"), t = (int)jnum(c, "t");
        const char *name = jstr(c, "name");
        char what[256];
        snprintf(what, sizeof what, "%s %s %s %s clip %d %s eta %.1f one %d S %d %s i %d (t %d -> %d)", name,
                 jstr(c, "sampler"), jstr(c, "beta_schedule"), pred, opt.clip_sample,
                 jstr(c, "variance_type"), (double)opt.eta, s.set_alpha_to_one, opt.steps, jstr(c, "spacing"),
                 i, t, (int)jnum(c, "prev"));
        sampler_plan p;
        ddpm_result r = sampler_plan_make(&s, &opt, &p);
        CHECK(r == DDPM_OK, "%s: plan: %s", what, ddpm_last_error());
        if (r != DDPM_OK)
            continue;
        CHECK(i < p.n_steps && p.timesteps[i] == t, "%s: plan timestep %d, want %d", what,
              i < p.n_steps ? p.timesteps[i] : -1, t);
        const float *row = p.coef + (size_t)i * DDPM_COEF_STRIDE;
        CHECK(row[DDPM_COEF_T] == (float)t, "%s: row T %g", what, (double)row[DDPM_COEF_T]);
        apply_row(y, x, o, z, row, n);
        float *want = test_tensor(&fx, name, NULL);
        test_close(what, y, want, n, 1e-6f, 1e-5f);
        /* update_cpu draws its own z: it must equal the row applied to rng_normal_fill's noise */
        rng_normal_fill(zr, per, 2, 5, (uint32_t)i, 77);
        apply_row(yr, x, o, zr, row, n);
        update_cpu(y2, x, o, row, per, 2, 5, (uint32_t)i, 77);
        int same = 1;
        for (int64_t e = 0; e < n; e++)
            same &= fabsf(y2[e] - yr[e]) <= 1e-6f * (1 + fabsf(yr[e]));
        CHECK(same, "%s: update_cpu differs from the row with rng_normal_fill noise", what);
        noisy += row[DDPM_COEF_SIGMA] != 0.0f;
        free(want);
        sampler_plan_free(&p);
        count++;
    }
    CHECK(count > 100 && noisy > 30, "step cases %d (with noise %d)", count, noisy);
    printf("steps: %d cases against the float64 reference, update_cpu checked on each\n", count);
    cJSON_Delete(cases);
    free(x);
    free(o);
    free(z);
    free(y);
    free(y2);
    free(zr);
    free(yr);
}

/* The linear map x' = cx x + co out + sigma z of a row without clipping. */
static void effective(const float *c, double *cx, double *co)
{
    double P0 = c[DDPM_COEF_P0], Q0 = c[DDPM_COEF_Q0], R1 = c[DDPM_COEF_R1];
    *cx = c[DDPM_COEF_A] * P0 + c[DDPM_COEF_B] * (c[DDPM_COEF_P1] + R1 * P0) + c[DDPM_COEF_C];
    *co = c[DDPM_COEF_A] * Q0 + c[DDPM_COEF_B] * (c[DDPM_COEF_Q1] + R1 * Q0);
}

/* DDIM with eta 1 over every training step is DDPM with the posterior variance (fixed_small). */
static void test_ddim_eta1_is_ddpm(void)
{
    for (int pred = PRED_EPSILON; pred <= PRED_V; pred++) {
        ddpm_schedule_config s;
        schedule_config_default(&s);
        s.prediction_type = (ddpm_prediction)pred;
        ddpm_sample_opts a, b;
        ddpm_sample_opts_default(&a);
        a.variance = 0;
        a.clip_sample = 0;
        b = a;
        b.sampler = DDPM_SAMPLER_DDIM;
        b.steps = s.num_train_timesteps;
        b.eta = 1.0f;
        sampler_plan pa, pb;
        CHECK(sampler_plan_make(&s, &a, &pa) == DDPM_OK, "ddpm plan: %s", ddpm_last_error());
        CHECK(sampler_plan_make(&s, &b, &pb) == DDPM_OK, "ddim plan: %s", ddpm_last_error());
        const int S = pa.n_steps;
        CHECK(S == 1000 && pb.n_steps == S, "plans of %d and %d steps", S, pb.n_steps);
        float *v[6];
        for (int k = 0; k < 6; k++)
            v[k] = malloc(sizeof(float) * (size_t)S);
        int same_t = 1;
        for (int i = 0; i < S; i++) {
            double cx, co;
            const float *ra = pa.coef + (size_t)i * DDPM_COEF_STRIDE,
                        *rb = pb.coef + (size_t)i * DDPM_COEF_STRIDE;
            effective(ra, &cx, &co);
            v[0][i] = (float)cx;
            v[1][i] = (float)co;
            v[2][i] = ra[DDPM_COEF_SIGMA];
            effective(rb, &cx, &co);
            v[3][i] = (float)cx;
            v[4][i] = (float)co;
            v[5][i] = rb[DDPM_COEF_SIGMA];
            same_t &= pa.timesteps[i] == pb.timesteps[i];
        }
        CHECK(same_t, "ddpm and ddim(T steps) visit different timesteps");
        char what[96];
        static const char *const pn[] = {"epsilon", "sample", "v"};
        snprintf(what, sizeof what, "ddim eta 1 == ddpm fixed_small (%s): x coefficient", pn[pred]);
        test_close(what, v[3], v[0], S, 1e-6f, 1e-5f);
        snprintf(what, sizeof what, "ddim eta 1 == ddpm fixed_small (%s): model-output coefficient",
                 pn[pred]);
        test_close(what, v[4], v[1], S, 1e-6f, 1e-5f);
        snprintf(what, sizeof what, "ddim eta 1 == ddpm fixed_small (%s): sigma", pn[pred]);
        test_close(what, v[5], v[2], S, 1e-6f, 1e-5f);
        for (int k = 0; k < 6; k++)
            free(v[k]);
        sampler_plan_free(&pa);
        sampler_plan_free(&pb);
    }
}

static int progress_calls, cancel_at = -1;
static int on_progress(void *user, int step, int steps)
{
    (void)user;
    progress_calls++;
    return step == cancel_at && steps > 0;
}
static char last_log[512];
static void on_log(void *user, const char *msg)
{
    (void)user;
    snprintf(last_log, sizeof last_log, "%s", msg);
}

static void test_cpu_runs(void)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "load unet_a: %s", ddpm_last_error());
    if (r != DDPM_OK)
        return;
    int C, H, W;
    ddpm_model_image_shape(m, &C, &H, &W);
    const int64_t per = (int64_t)C * H * W;
    ddpm_sample_opts o;
    ddpm_sample_opts_default(&o);
    o.device = "cpu";
    o.steps = 8; /* ddpm with 8 leading steps: noise at every step but the last */
    o.seed = 1234;
    o.n = 3;
    o.progress = on_progress;
    o.log = on_log;
    float *a = malloc(sizeof(float) * (size_t)(per * 20)), *b = malloc(sizeof(float) * (size_t)(per * 20));
    progress_calls = 0;
    r = ddpm_sample(m, &o, a);
    CHECK(r == DDPM_OK, "ddpm n=3: %s", ddpm_last_error());
    CHECK(progress_calls == 8, "progress called %d times, want 8", progress_calls);
    CHECK(strstr(last_log, "cpu") != NULL, "log does not name the cpu: \"%s\"", last_log);
    int finite = 1;
    double amax = 0;
    for (int64_t e = 0; e < per * 3; e++) {
        finite &= isfinite(a[e]) != 0;
        amax = fmax(amax, fabs(a[e]));
    }
    CHECK(finite && amax > 0.01, "samples not finite or all zero (max |x| %g)", amax);
    r = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK && memcmp(a, b, sizeof(float) * (size_t)(per * 3)) == 0,
          "same seed, different samples");
    o.n = 1;
    o.first_index = 2;
    r = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK, "ddpm n=1 first 2: %s", ddpm_last_error());
    test_close("cpu ddpm: image 2 of n=3 == n=1 with first_index 2", b, a + 2 * per, per, 1e-6f, 1e-6f);
    o.first_index = 0;
    o.seed = 1235;
    r = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK && memcmp(a, b, sizeof(float) * (size_t)per) != 0,
          "another seed gives the same image");

    /* more images than one CPU chunk (16): image 18 of 20 == image 18 alone (ddim, 3 steps, eta 0.5) */
    o.sampler = DDPM_SAMPLER_DDIM;
    o.steps = 3;
    o.eta = 0.5f;
    o.seed = 99;
    o.n = 20;
    r = ddpm_sample(m, &o, a);
    CHECK(r == DDPM_OK, "ddim n=20: %s", ddpm_last_error());
    o.n = 1;
    o.first_index = 18;
    r = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK, "ddim n=1 first 18: %s", ddpm_last_error());
    test_close("cpu ddim: image 18 of n=20 (two chunks) == n=1 with first_index 18", b, a + 18 * per, per,
               1e-6f, 1e-6f);

    /* init given and eta 0: no randomness at all, the seed must not matter */
    o.first_index = 0;
    o.eta = 0.0f;
    float *init = malloc(sizeof(float) * (size_t)per);
    rng_normal_fill(init, per, 1, 0, 5, 5);
    o.init = init;
    o.seed = 1;
    r = ddpm_sample(m, &o, a);
    o.seed = 2;
    ddpm_result r2 = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK && r2 == DDPM_OK && memcmp(a, b, sizeof(float) * (size_t)per) == 0,
          "ddim eta 0 from a given x_T depends on the seed");
    /* an init equal to the seed's own x_T (counter step DDPM_NOISE_STEP_INIT) reproduces the seeded run */
    o.init = NULL;
    o.seed = 2;
    r = ddpm_sample(m, &o, a);
    rng_normal_fill(init, per, 1, 0, DDPM_NOISE_STEP_INIT, 2);
    o.init = init;
    o.seed = 3;
    r2 = ddpm_sample(m, &o, b);
    CHECK(r == DDPM_OK && r2 == DDPM_OK && memcmp(a, b, sizeof(float) * (size_t)per) == 0,
          "x_T drawn from seed 2 differs from init = rng_normal_fill(step DDPM_NOISE_STEP_INIT, seed 2)");
    o.init = NULL;

    /* cancel from the progress callback */
    cancel_at = 2;
    progress_calls = 0;
    r = ddpm_sample(m, &o, a);
    CHECK(r == DDPM_ERR_ARG && progress_calls == 2, "cancel: %s after %d calls", ddpm_result_string(r),
          progress_calls);
    cancel_at = -1;
    printf("cpu runs: ddpm/ddim on unet_a (%dx%dx%d): deterministic, batch- and chunk-independent\n", C, H,
           W);
    free(init);
    free(a);
    free(b);
    ddpm_model_free(m);
}

static void expect_refused(const ddpm_model *m, const ddpm_sample_opts *o, ddpm_result want, const char *what,
                           float *out)
{
    ddpm_result r = ddpm_sample(m, o, out);
    CHECK(r == want, "%s: got %s, want %s", what, ddpm_result_string(r), ddpm_result_string(want));
    CHECK(r == DDPM_OK || ddpm_last_error()[0] != '\0', "%s: no error message", what);
    printf("%s %s -> %s: %s\n", r == want ? "ok  " : "FAIL", what, ddpm_result_string(r), ddpm_last_error());
}

static void test_bad_options(void)
{
    ddpm_model *m = NULL;
    ddpm_result r = ddpm_model_load(test_fixture_path("unet_a.safetensors"), &m);
    CHECK(r == DDPM_OK, "load unet_a: %s", ddpm_last_error());
    if (r != DDPM_OK)
        return;
    float *out = malloc(sizeof(float) * 3 * 16 * 16);
    ddpm_sample_opts d, o;
    ddpm_sample_opts_default(&d);
    d.device = "cpu";
    CHECK(d.sampler == DDPM_SAMPLER_DDPM && d.steps == 0 && d.n == 1 && d.variance == -1 &&
              d.clip_sample == -1,
          "ddpm_sample_opts_default");
#define BAD(field, value, want)                                                                              \
    do {                                                                                                     \
        o = d;                                                                                               \
        o.field = value;                                                                                     \
        expect_refused(m, &o, want, #field " = " #value, out);                                               \
    } while (0)
    BAD(n, 0, DDPM_ERR_ARG);
    BAD(n, -3, DDPM_ERR_ARG);
    BAD(first_index, -1, DDPM_ERR_ARG);
    BAD(steps, -1, DDPM_ERR_ARG);
    BAD(steps, 1001, DDPM_ERR_ARG);
    BAD(eta, 2.0f, DDPM_ERR_ARG);
    BAD(eta, -0.1f, DDPM_ERR_ARG);
    BAD(eta, NAN, DDPM_ERR_ARG);
    BAD(variance, 2, DDPM_ERR_ARG);
    BAD(clip_sample, 5, DDPM_ERR_ARG);
    BAD(sampler, (ddpm_sampler_kind)7, DDPM_ERR_ARG);
    BAD(spacing, (ddpm_spacing)99, DDPM_ERR_ARG);
    BAD(n, 2147483647, DDPM_ERR_NOMEM); /* 2^31 images of 768 floats */
    o = d;
    o.first_index = 2147483647;
    o.n = 2;
    expect_refused(m, &o, DDPM_ERR_ARG, "first_index INT_MAX with n = 2 (index overflows)", out);
    BAD(device, "nonexistent-gpu-xyz", DDPM_ERR_NO_DEVICE);
    o = d;
    o.sampler = DDPM_SAMPLER_DDIM;
    o.spacing = DDPM_SPACING_QUAD;
    o.steps = 37;
    expect_refused(m, &o, DDPM_ERR_ARG, "ddim quad spacing with 37 of 1000 steps (repeats timestep 0)", out);
    o = d;
    o.sampler = DDPM_SAMPLER_DDIM;
    o.steps = 1000; /* leading with steps_offset 0 is fine at S = T */
    o.n = 0;
    expect_refused(m, &o, DDPM_ERR_ARG, "ddim n = 0", out);
    CHECK(ddpm_sample(NULL, &d, out) == DDPM_ERR_ARG, "NULL model accepted");
    CHECK(ddpm_sample(m, NULL, out) == DDPM_ERR_ARG, "NULL options accepted");
    CHECK(ddpm_sample(m, &d, NULL) == DDPM_ERR_ARG, "NULL output accepted");
#undef BAD
    free(out);
    ddpm_model_free(m);
}

int main(void)
{
    test_open_fixture("sched.safetensors", &fx);
    test_betas();
    test_timesteps();
    test_steps();
    test_ddim_eta1_is_ddpm();
    st_close(&fx);
    test_cpu_runs();
    test_bad_options();
    return test_summary("sampler");
}
