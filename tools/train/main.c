/* main.c: ddpm-train, the CPU trainer: DDPM simple loss (epsilon or v), AdamW with warmup, clipping, EMA,
 * exact kill-and-resume checkpoints, a loss CSV, sample grids through ddpm_sample and the EMA export. */
#include "adamw.h"
#include "ckpt.h"
#include "data.h"

#include "config.h"
#include "cpu/train.h"
#include "image.h"
#include "model.h"
#include "rng.h"
#include "schedule.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"

static const char usage[] =
    "usage: ddpm-train --out DIR [options]\n"
    "\n"
    "Trains a DDPM U-Net (diffusers UNet2DModel) on the CPU and exports its EMA weights as ddpm-vk "
    "safetensors.\n"
    "DIR receives checkpoint.safetensors, model.safetensors (EMA, F16), loss.csv and samples/step-N.png.\n"
    "\n"
    "data and model:\n"
    "  --data PATH          IDX image file (raw or .gz) or a folder of PNG/JPEG (default " DEFAULT_DATA ")\n"
    "  --size N             image side: resize + center crop (default 28)\n"
    "  --channels N         1 grey or 3 RGB (default 1)\n"
    "  --blocks LIST        block_out_channels (default 32,64,64)\n"
    "  --attn LIST          1 for each level with attention (default 0,1,0)\n"
    "  --layers N           res blocks per level, layers_per_block (default 1)\n"
    "  --groups N           GroupNorm groups (default 8)\n"
    "  --no-mid-attn        no attention in the middle block\n"
    "  --dropout P          res-block dropout (default 0)\n"
    "  --prediction KIND    epsilon or v_prediction (default epsilon)\n"
    "  --schedule KIND      linear or squaredcos_cap_v2 (default linear, T = 1000)\n"
    "training:\n"
    "  --steps N            total optimizer steps (default 20000)\n"
    "  --batch N            images per step (default 64)\n"
    "  --lr X               AdamW learning rate after warmup (default 3e-4)\n"
    "  --warmup N           linear warmup steps (default 500)\n"
    "  --weight-decay X     AdamW decoupled weight decay (default 0)\n"
    "  --beta1 X --beta2 X --adam-eps X   AdamW (default 0.9, 0.999, 1e-8)\n"
    "  --clip X             clip the gradient's global norm (default 1; 0 off)\n"
    "  --ema X              EMA decay, warmed up as min(X, (1+n)/(10+n)) (default 0.9995)\n"
    "  --flip               random horizontal flips\n"
    "  --seed N             every random draw derives from it (default 0)\n"
    "output:\n"
    "  --out DIR            run folder (required)\n"
    "  --resume             continue DIR/checkpoint.safetensors exactly where it stopped\n"
    "  --export PATH        also write the EMA model (F16 safetensors) here at every checkpoint\n"
    "  --ckpt-every N       checkpoint every N steps (default 0: by time only)\n"
    "  --ckpt-minutes M     checkpoint every M minutes (default 5)\n"
    "  --sample-every K     sample grid every K steps (default 1000; 0 off)\n"
    "  --sample-n N --sample-steps S   grid of N images, DDIM with S steps (default 16, 25)\n"
    "  --stop-after N       stop at step N as on SIGTERM (checkpoint, export, exit 0)\n"
    "  --quiet              no progress line\n"
    "SIGINT/SIGTERM write a checkpoint and stop; --resume then continues bit-identically\n"
    "(same machine, same OMP_NUM_THREADS).\n";

typedef struct opts {
    const char *data, *out, *export_path;
    int size, channels, layers, groups, mid_attn, levels;
    int blocks[DDPM_MAX_LEVELS], attn[DDPM_MAX_LEVELS];
    double dropout, lr, weight_decay, beta1, beta2, adam_eps, clip, ema;
    int warmup, batch, flip, resume, quiet, sample_n, sample_steps;
    ddpm_prediction prediction;
    ddpm_beta_kind schedule;
    int64_t steps, ckpt_every, sample_every, stop_after;
    double ckpt_minutes;
    uint64_t seed;
} opts;

static void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ddpm-train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- option parsing ------------------------------------------------------------------------------- */

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = isdigit((unsigned char)s[0]) ? strtoll(s, &end, 10) : 0;
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
        fail("%s: '%s' is not an integer in %" PRId64 "..%" PRId64, opt, s, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_int(const char *opt, const char *s, int lo, int hi, int *out)
{
    int64_t v;
    if (!parse_i64(opt, s, lo, hi, &v))
        return 0;
    *out = (int)v;
    return 1;
}

static int parse_dbl(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = (isdigit((unsigned char)s[0]) || s[0] == '.') ? strtod(s, &end) : NAN;
    if (!(isdigit((unsigned char)s[0]) || s[0] == '.') || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        fail("%s: '%s' is not a number in %g..%g", opt, s, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

/* "32,64,64" -> list; n set to the count. */
static int parse_list(const char *opt, const char *s, int lo, int hi, int *list, int *n)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1;
        if (v < lo || v > hi || (*end != ',' && *end != '\0') || *n == DDPM_MAX_LEVELS) {
            fail("%s: '%s' is not a list of up to %d integers in %d..%d", opt, s, DDPM_MAX_LEVELS, lo, hi);
            return 0;
        }
        list[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) {
            fail("%s: '%s' ends with a comma", opt, s);
            return 0;
        }
    }
    if (*n == 0) {
        fail("%s: empty list", opt);
        return 0;
    }
    return 1;
}

/* Returns 0 to go on, 1 after --help, 2 on a usage error (message printed). */
static int parse_args(int argc, char **argv, opts *o)
{
    int n_attn = 3;
    *o = (opts){.data = DEFAULT_DATA,
                .size = 28,
                .channels = 1,
                .layers = 1,
                .groups = 8,
                .mid_attn = 1,
                .levels = 3,
                .blocks = {32, 64, 64},
                .attn = {0, 1, 0},
                .lr = 3e-4,
                .beta1 = 0.9,
                .beta2 = 0.999,
                .adam_eps = 1e-8,
                .clip = 1.0,
                .ema = 0.9995,
                .warmup = 500,
                .batch = 64,
                .sample_n = 16,
                .sample_steps = 25,
                .prediction = PRED_EPSILON,
                .schedule = BETA_LINEAR,
                .steps = 20000,
                .sample_every = 1000,
                .ckpt_minutes = 5};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 1;
        }
        if (!strcmp(a, "--flip")) {
            o->flip = 1;
            continue;
        }
        if (!strcmp(a, "--resume")) {
            o->resume = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--no-mid-attn")) {
            o->mid_attn = 0;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            fail("unexpected argument '%s' (see ddpm-train --help)", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fail("%s: missing value (see ddpm-train --help)", a);
            return 2;
        }
        const char *v = argv[++i];
        int ok;
        if (!strcmp(a, "--data"))
            o->data = v, ok = 1;
        else if (!strcmp(a, "--out"))
            o->out = v, ok = 1;
        else if (!strcmp(a, "--export"))
            o->export_path = v, ok = 1;
        else if (!strcmp(a, "--size"))
            ok = parse_int(a, v, 4, 1024, &o->size);
        else if (!strcmp(a, "--channels"))
            ok = parse_int(a, v, 1, 3, &o->channels) && (o->channels != 2 || (fail("--channels: 1 or 3"), 0));
        else if (!strcmp(a, "--blocks"))
            ok = parse_list(a, v, 1, 4096, o->blocks, &o->levels);
        else if (!strcmp(a, "--attn"))
            ok = parse_list(a, v, 0, 1, o->attn, &n_attn);
        else if (!strcmp(a, "--layers"))
            ok = parse_int(a, v, 1, 8, &o->layers);
        else if (!strcmp(a, "--groups"))
            ok = parse_int(a, v, 1, 1024, &o->groups);
        else if (!strcmp(a, "--dropout"))
            ok = parse_dbl(a, v, 0, 0.99, &o->dropout);
        else if (!strcmp(a, "--prediction")) {
            ok = 1;
            if (!strcmp(v, "epsilon"))
                o->prediction = PRED_EPSILON;
            else if (!strcmp(v, "v_prediction"))
                o->prediction = PRED_V;
            else
                ok = 0, fail("--prediction: '%s' is not epsilon or v_prediction", v);
        } else if (!strcmp(a, "--schedule")) {
            ok = 1;
            if (!strcmp(v, "linear"))
                o->schedule = BETA_LINEAR;
            else if (!strcmp(v, "squaredcos_cap_v2"))
                o->schedule = BETA_SQUAREDCOS_CAP_V2;
            else
                ok = 0, fail("--schedule: '%s' is not linear or squaredcos_cap_v2", v);
        } else if (!strcmp(a, "--steps"))
            ok = parse_i64(a, v, 1, INT32_MAX, &o->steps);
        else if (!strcmp(a, "--batch"))
            ok = parse_int(a, v, 1, 4096, &o->batch);
        else if (!strcmp(a, "--lr"))
            ok = parse_dbl(a, v, 0, 1, &o->lr);
        else if (!strcmp(a, "--warmup"))
            ok = parse_int(a, v, 0, INT32_MAX, &o->warmup);
        else if (!strcmp(a, "--weight-decay"))
            ok = parse_dbl(a, v, 0, 1, &o->weight_decay);
        else if (!strcmp(a, "--beta1"))
            ok = parse_dbl(a, v, 0, 0.999999, &o->beta1);
        else if (!strcmp(a, "--beta2"))
            ok = parse_dbl(a, v, 0, 0.999999, &o->beta2);
        else if (!strcmp(a, "--adam-eps"))
            ok = parse_dbl(a, v, 1e-30, 1, &o->adam_eps);
        else if (!strcmp(a, "--clip"))
            ok = parse_dbl(a, v, 0, 1e9, &o->clip);
        else if (!strcmp(a, "--ema"))
            ok = parse_dbl(a, v, 0, 0.999999, &o->ema);
        else if (!strcmp(a, "--seed"))
            ok = parse_i64(a, v, 0, INT64_MAX, (int64_t *)&o->seed);
        else if (!strcmp(a, "--ckpt-every"))
            ok = parse_i64(a, v, 0, INT32_MAX, &o->ckpt_every);
        else if (!strcmp(a, "--ckpt-minutes"))
            ok = parse_dbl(a, v, 0, 1e6, &o->ckpt_minutes);
        else if (!strcmp(a, "--sample-every"))
            ok = parse_i64(a, v, 0, INT32_MAX, &o->sample_every);
        else if (!strcmp(a, "--sample-n"))
            ok = parse_int(a, v, 1, 256, &o->sample_n);
        else if (!strcmp(a, "--sample-steps"))
            ok = parse_int(a, v, 1, 1000, &o->sample_steps);
        else if (!strcmp(a, "--stop-after"))
            ok = parse_i64(a, v, 1, INT32_MAX, &o->stop_after);
        else {
            fail("unknown option '%s' (see ddpm-train --help)", a);
            return 2;
        }
        if (!ok)
            return 2;
    }
    if (!o->out) {
        fail("--out DIR is required (see ddpm-train --help)");
        return 2;
    }
    if (n_attn != o->levels) {
        fail("--attn has %d entries for %d levels in --blocks", n_attn, o->levels);
        return 2;
    }
    if ((int64_t)o->steps * o->batch > (int64_t)INT32_MAX * 64) {
        fail("--steps x --batch is too large");
        return 2;
    }
    return 0;
}

/* ---- randomness: every draw is Philox at (seed, stream, step or epoch, index) ---------------------- */

enum { STREAM_PERM = 1, STREAM_TIME = 2, STREAM_DROPOUT = 3, STREAM_INIT = 4 };

static void draw4(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, uint32_t out[4])
{
    /* the last counter word is non-zero, so these never meet the sampler's noise counters (.., 0) */
    const uint32_t ctr[4] = {a, b, stream, 0x7a11u};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    philox4x32_10(ctr, key, out);
}

/* The permutation of the data for one epoch: Fisher-Yates driven by (seed, epoch). */
static void epoch_perm(uint64_t seed, int64_t epoch, int n, int *perm)
{
    for (int j = 0; j < n; j++)
        perm[j] = j;
    for (int j = n - 1; j > 0; j--) {
        uint32_t r[4];
        draw4(seed, STREAM_PERM, (uint32_t)j, (uint32_t)epoch, r);
        int k = (int)(((uint64_t)r[0] * (uint64_t)(j + 1)) >> 32);
        int tmp = perm[j];
        perm[j] = perm[k];
        perm[k] = tmp;
    }
}

/* torch's default init: conv and linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming
 * uniform with a = sqrt(5)), GroupNorm gamma 1 and beta 0. */
static void init_weights(const ddpm_graph *g, float *const *w, uint64_t seed)
{
    for (int i = 0; i < g->n_nodes; i++) {
        const ddpm_node *nd = &g->nodes[i];
        for (int k = 0; k < 2; k++) {
            int p = nd->w[k];
            if (p < 0)
                continue;
            int64_t numel = g->params[p].numel;
            if (nd->op == OP_GROUPNORM) {
                for (int64_t e = 0; e < numel; e++)
                    w[p][e] = k == 0 ? 1.0f : 0.0f;
                continue;
            }
            const ddpm_param *wp = &g->params[nd->w[0]];
            double bound = 1.0 / sqrt((double)(wp->numel / wp->shape[0]));
            for (int64_t e = 0; e < numel; e += 4) {
                uint32_t r[4];
                draw4(seed, STREAM_INIT, (uint32_t)(e / 4), (uint32_t)p, r);
                for (int j = 0; j < 4 && e + j < numel; j++)
                    w[p][e + j] = (float)((2.0 * rng_uniform24(r[j]) - 1.0) * bound);
            }
        }
    }
}

/* ---- files ---------------------------------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    g_stop = sig;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process (every thread): on a shared machine, a steadier cost measure than wall time.
 */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Creates dir if missing and checks a file can be created in it, before any work is done. */
static int ensure_writable_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (mkdir(dir, 0777) != 0) {
            fail("%s: cannot create the folder: %s", dir, strerror(errno));
            return 0;
        }
    } else if (!S_ISDIR(st.st_mode)) {
        fail("%s: exists and is not a folder", dir);
        return 0;
    }
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/.ddpm-train-probe.%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "wb");
    if (!f) {
        fail("%s: cannot write there: %s", dir, strerror(errno));
        return 0;
    }
    fclose(f);
    remove(probe);
    return 1;
}

/* The folder part of a file path ("." when none). */
static void dir_of(const char *path, char *buf, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, n, ".");
    else if (slash == path)
        snprintf(buf, n, "/");
    else
        snprintf(buf, n, "%.*s", (int)(slash - path), path);
}

/* Keeps the header and the rows of loss.csv up to `step` (a resumed run rewrites what came after). */
static int csv_trim(const char *path, int64_t step)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 1; /* nothing yet */
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap), line[512];
    if (!out) {
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        long long s = -1;
        if (isdigit((unsigned char)line[0]) && (sscanf(line, "%lld", &s) != 1 || s > step))
            break;
        size_t len = strlen(line);
        if (n + len > cap) {
            char *nb = realloc(out, cap * 2 + len);
            if (!nb) {
                free(out);
                fclose(f);
                return 0;
            }
            out = nb;
            cap = cap * 2 + len;
        }
        memcpy(out + n, line, len);
        n += len;
    }
    fclose(f);
    ddpm_result r = ddpm_write_file_atomic(path, out, n);
    free(out);
    if (r != DDPM_OK)
        fail("%s", ddpm_last_error());
    return r == DDPM_OK;
}

static void fmt_duration(double s, char *buf, size_t n)
{
    if (!(s >= 0) || s > 1e8)
        snprintf(buf, n, "?");
    else if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

/* ---- the run -------------------------------------------------------------------------------------- */

typedef struct run {
    opts o;
    dataset data;
    ddpm_unet_config cfg;
    ddpm_schedule_config sched;
    ddpm_graph graph;
    ddpm_model *model; /* the EMA weights for sampling and export */
    cpu_trainer *tr;
    train_state st;
    float *grads;
    float **wp, **gp; /* per-param pointers into st.weights / grads */
    double *acp;
    char *config, *unet_json, *sched_json;
    char ckpt_path[4096], model_path[4096], csv_path[4096], sample_dir[4096];
    int *perm;
    int64_t perm_epoch;
    FILE *csv;
} run;

static void make_config_text(run *r)
{
    const opts *o = &r->o;
    size_t n = strlen(r->unet_json) + strlen(r->sched_json) + 1024;
    r->config = malloc(n);
    if (!r->config)
        return;
    snprintf(r->config, n,
             "model=%s\nscheduler=%s\ndata=%dx%dx%dx%d crc32=%08x\nbatch=%d\nlr=%.17g\nwarmup=%d\n"
             "weight_decay=%.17g\nbeta1=%.17g\nbeta2=%.17g\nadam_eps=%.17g\nclip=%.17g\nema=%.17g\nflip=%d\n"
             "dropout=%.17g\nseed=%" PRIu64 "\n",
             r->unet_json, r->sched_json, r->data.n, r->data.c, r->data.s, r->data.s, r->data.crc, o->batch,
             o->lr, o->warmup, o->weight_decay, o->beta1, o->beta2, o->adam_eps, o->clip, o->ema, o->flip,
             o->dropout, o->seed);
}

static int setup_model(run *r)
{
    const opts *o = &r->o;
    unet_config_default(&r->cfg);
    r->cfg.in_channels = r->cfg.out_channels = o->channels;
    r->cfg.sample_size = o->size;
    r->cfg.levels = o->levels;
    for (int i = 0; i < o->levels; i++) {
        r->cfg.block_out_channels[i] = o->blocks[i];
        r->cfg.down_attn[i] = o->attn[i];
        r->cfg.up_attn[o->levels - 1 - i] = o->attn[i];
    }
    r->cfg.layers_per_block = o->layers;
    r->cfg.mid_attn = o->mid_attn;
    r->cfg.norm_num_groups = o->groups;
    r->cfg.norm_eps = 1e-5f;
    r->cfg.downsample_padding = 1;
    r->cfg.freq_shift = 0;
    r->cfg.flip_sin_to_cos = 1;
    schedule_config_default(&r->sched);
    r->sched.beta_schedule = o->schedule;
    r->sched.prediction_type = o->prediction;
    if (unet_config_validate(&r->cfg) != DDPM_OK || schedule_config_validate(&r->sched) != DDPM_OK) {
        fail("model: %s", ddpm_last_error());
        return 0;
    }
    if (model_create_random(&r->cfg, &r->sched, 0, 0.0f, &r->model) != DDPM_OK ||
        graph_build(&r->cfg, &r->graph) != DDPM_OK) {
        fail("model: %s", ddpm_last_error());
        return 0;
    }
    r->unet_json = unet_config_to_json(&r->cfg);
    r->sched_json = schedule_config_to_json(&r->sched);
    if (!r->unet_json || !r->sched_json)
        return 0;
    /* one flat array per kind; per-param pointers into it */
    const ddpm_graph *g = &r->graph;
    int64_t n = g->n_weights;
    r->st.n = n;
    r->st.weights = calloc((size_t)n, sizeof(float));
    r->st.ema = calloc((size_t)n, sizeof(float));
    r->st.adam_m = calloc((size_t)n, sizeof(float));
    r->st.adam_v = calloc((size_t)n, sizeof(float));
    r->grads = calloc((size_t)n, sizeof(float));
    r->wp = calloc((size_t)g->n_params, sizeof(float *));
    r->gp = calloc((size_t)g->n_params, sizeof(float *));
    if (!r->st.weights || !r->st.ema || !r->st.adam_m || !r->st.adam_v || !r->grads || !r->wp || !r->gp) {
        fail("out of memory for %" PRId64 " parameters", n);
        return 0;
    }
    int64_t off = 0;
    for (int i = 0; i < g->n_params; i++) {
        r->wp[i] = r->st.weights + off;
        r->gp[i] = r->grads + off;
        off += g->params[i].numel;
    }
    int Tn = r->sched.num_train_timesteps;
    double *betas = malloc(sizeof(double) * (size_t)Tn);
    r->acp = malloc(sizeof(double) * (size_t)Tn);
    if (!betas || !r->acp || schedule_betas(&r->sched, betas) != DDPM_OK) {
        free(betas);
        fail("schedule: %s", ddpm_last_error());
        return 0;
    }
    schedule_alphas_cumprod(betas, Tn, r->acp);
    free(betas);
    if (cpu_train_create(&r->graph, o->batch, (float)o->dropout, &r->tr) != DDPM_OK) {
        fail("trainer: %s", ddpm_last_error());
        return 0;
    }
    return 1;
}

/* Copies the EMA weights into the sampling model. */
static void ema_to_model(run *r)
{
    int64_t off = 0;
    for (int i = 0; i < r->graph.n_params; i++) {
        memcpy(r->model->weights[i], r->st.ema + off, sizeof(float) * (size_t)r->graph.params[i].numel);
        off += r->graph.params[i].numel;
    }
}

static int save_all(run *r)
{
    int64_t p = r->st.step * r->o.batch;
    if (ckpt_save(r->ckpt_path, &r->st, r->config, r->unet_json, r->sched_json, p / r->data.n,
                  p % r->data.n) != DDPM_OK) {
        fail("checkpoint: %s", ddpm_last_error());
        return 0;
    }
    ema_to_model(r);
    if (model_save(r->model, r->model_path, ST_F16) != DDPM_OK ||
        (r->o.export_path && model_save(r->model, r->o.export_path, ST_F16) != DDPM_OK)) {
        fail("export: %s", ddpm_last_error());
        return 0;
    }
    return 1;
}

static int sample_grid(run *r)
{
    ema_to_model(r);
    ddpm_sample_opts so;
    ddpm_sample_opts_default(&so);
    so.sampler = DDPM_SAMPLER_DDIM;
    so.steps = r->o.sample_steps;
    so.spacing = DDPM_SPACING_TRAILING;
    so.n = r->o.sample_n;
    so.seed = 0;
    so.device = "cpu";
    int64_t per = (int64_t)r->cfg.in_channels * r->cfg.sample_size * r->cfg.sample_size;
    float *x = malloc(sizeof(float) * (size_t)(per * so.n));
    char path[4200];
    snprintf(path, sizeof path, "%s/step-%07" PRId64 ".png", r->sample_dir, r->st.step);
    ddpm_result res = x ? ddpm_sample(r->model, &so, x) : DDPM_ERR_NOMEM;
    if (res == DDPM_OK)
        res = image_write_png_grid(path, x, so.n, r->cfg.in_channels, r->cfg.sample_size, r->cfg.sample_size);
    free(x);
    if (res != DDPM_OK) {
        fail("sample grid: %s", ddpm_last_error());
        return 0;
    }
    return 1;
}

/* One optimizer step: batch, noise, forward, loss, backward, clip, AdamW, EMA. Returns the loss (NaN on
 * a failure, message printed). */
static double train_step(run *r, float *x0, float *eps, float *xt, float *tt, float *dout, double *gnorm)
{
    const opts *o = &r->o;
    const int B = o->batch, T = r->sched.num_train_timesteps;
    const int64_t per = (int64_t)r->data.c * r->data.s * r->data.s;
    const int64_t s = r->st.step; /* 0-based index of this step */
    for (int i = 0; i < B; i++) {
        int64_t p = s * B + i, epoch = p / r->data.n;
        if (epoch != r->perm_epoch) {
            epoch_perm(o->seed, epoch, r->data.n, r->perm);
            r->perm_epoch = epoch;
        }
        uint32_t u[4];
        draw4(o->seed, STREAM_TIME, (uint32_t)i, (uint32_t)s, u);
        int t = (int)(rng_uniform24(u[0]) * (float)T);
        if (t > T - 1)
            t = T - 1;
        tt[i] = (float)t;
        dataset_get(&r->data, r->perm[p % r->data.n], o->flip && rng_uniform24(u[1]) < 0.5f, x0 + i * per);
    }
    rng_normal_fill(eps, per, B, 0, (uint32_t)s, o->seed);
    for (int i = 0; i < B; i++) {
        double a = r->acp[(int)tt[i]];
        float ca = (float)sqrt(a), cb = (float)sqrt(1.0 - a);
        for (int64_t e = i * per; e < (i + 1) * per; e++)
            xt[e] = ca * x0[e] + cb * eps[e];
        if (o->prediction == PRED_V) /* target v = sqrt(a) eps - sqrt(1 - a) x0, kept in eps */
            for (int64_t e = i * per; e < (i + 1) * per; e++)
                eps[e] = ca * eps[e] - cb * x0[e];
    }
    uint32_t dr[4];
    draw4(o->seed, STREAM_DROPOUT, (uint32_t)s, (uint32_t)(s >> 32), dr);
    const float *out = NULL;
    if (cpu_train_forward(r->tr, (const float *const *)r->wp, xt, tt, (uint64_t)dr[0] | (uint64_t)dr[1] << 32,
                          &out) != DDPM_OK) {
        fail("forward: %s", ddpm_last_error());
        return NAN;
    }
    const int64_t N = per * B;
    double loss = 0;
    const float scale = (float)(2.0 / (double)N);
    for (int64_t e = 0; e < N; e++) {
        float d = out[e] - eps[e];
        loss += (double)d * d;
        dout[e] = scale * d;
    }
    loss /= (double)N;
    memset(r->grads, 0, sizeof(float) * (size_t)r->st.n);
    if (cpu_train_backward(r->tr, (const float *const *)r->wp, dout, r->gp) != DDPM_OK) {
        fail("backward: %s", ddpm_last_error());
        return NAN;
    }
    *gnorm = grad_global_norm(r->grads, r->st.n);
    if (!isfinite(loss) || !isfinite(*gnorm)) {
        fail("step %" PRId64 ": the loss or the gradient is not finite (lower --lr?); stopping without a "
             "checkpoint",
             s + 1);
        return NAN;
    }
    grad_clip(r->grads, r->st.n, *gnorm, o->clip);
    double warm = o->warmup > 0 ? (double)(s + 1) / o->warmup : 1.0;
    adamw_opts ao = {o->lr * (warm < 1 ? warm : 1), o->beta1, o->beta2, o->adam_eps, o->weight_decay};
    adamw_step(r->st.weights, r->grads, r->st.adam_m, r->st.adam_v, r->st.n, s + 1, &ao);
    double dd = (1.0 + (double)s) / (10.0 + (double)s);
    const float d = (float)(dd < o->ema ? dd : o->ema), omd = 1.0f - d;
    float *ema = r->st.ema;
    const float *w = r->st.weights;
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < r->st.n; e++)
        ema[e] = d * ema[e] + omd * w[e];
    r->st.step = s + 1;
    return loss;
}

static void run_free(run *r)
{
    dataset_free(&r->data);
    if (r->tr)
        cpu_train_free(r->tr);
    graph_free(&r->graph);
    ddpm_model_free(r->model);
    free(r->st.weights);
    free(r->st.ema);
    free(r->st.adam_m);
    free(r->st.adam_v);
    free(r->grads);
    free(r->wp);
    free(r->gp);
    free(r->acp);
    free(r->config);
    free(r->unet_json);
    free(r->sched_json);
    free(r->perm);
    if (r->csv)
        fclose(r->csv);
}

int main(int argc, char **argv)
{
    static run R;
    run *r = &R;
    int pa = parse_args(argc, argv, &r->o);
    if (pa)
        return pa == 1 ? 0 : 2;
    const opts *o = &r->o;
    int status = 1;
    r->perm_epoch = -1;

    /* everything that can be refused is checked before anything is written */
    if (dataset_load(o->data, o->channels, o->size, &r->data) != DDPM_OK) {
        fail("%s", ddpm_last_error());
        goto done;
    }
    r->perm = malloc(sizeof(int) * (size_t)r->data.n);
    if (!r->perm || !setup_model(r))
        goto done;
    make_config_text(r);
    if (!r->config)
        goto done;
    snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s/checkpoint.safetensors", o->out);
    snprintf(r->model_path, sizeof r->model_path, "%s/model.safetensors", o->out);
    snprintf(r->csv_path, sizeof r->csv_path, "%s/loss.csv", o->out);
    snprintf(r->sample_dir, sizeof r->sample_dir, "%s/samples", o->out);
    struct stat sst;
    if (o->resume) {
        if (stat(r->ckpt_path, &sst) != 0) {
            fail("--resume: %s: %s", r->ckpt_path, strerror(errno));
            goto done;
        }
        if (ckpt_load(r->ckpt_path, &r->st, r->config) != DDPM_OK) {
            fail("%s", ddpm_last_error());
            goto done;
        }
    } else {
        if (stat(r->ckpt_path, &sst) == 0) {
            fail("%s exists: pass --resume to continue it, or choose another --out", r->ckpt_path);
            goto done;
        }
        init_weights(&r->graph, r->wp, o->seed);
        memcpy(r->st.ema, r->st.weights, sizeof(float) * (size_t)r->st.n);
    }
    if (!ensure_writable_dir(o->out) || (o->sample_every > 0 && !ensure_writable_dir(r->sample_dir)))
        goto done;
    if (o->export_path) {
        char dir[4096];
        dir_of(o->export_path, dir, sizeof dir);
        if (stat(o->export_path, &sst) == 0 && S_ISDIR(sst.st_mode)) {
            fail("--export: %s is a folder", o->export_path);
            goto done;
        }
        if (!ensure_writable_dir(dir))
            goto done;
    }
    if (!csv_trim(r->csv_path, r->st.step))
        goto done;
    int new_csv = stat(r->csv_path, &sst) != 0;
    r->csv = fopen(r->csv_path, "ab");
    if (!r->csv) {
        fail("%s: %s", r->csv_path, strerror(errno));
        goto done;
    }
    if (new_csv)
        fprintf(r->csv, "step,loss,lr,grad_norm\n");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const int B = o->batch;
    const int64_t per = (int64_t)r->data.c * r->data.s * r->data.s;
    float *x0 = malloc(sizeof(float) * (size_t)(per * B)), *eps = malloc(sizeof(float) * (size_t)(per * B));
    float *xt = malloc(sizeof(float) * (size_t)(per * B)), *dout = malloc(sizeof(float) * (size_t)(per * B));
    float *tt = malloc(sizeof(float) * (size_t)B);
    if (!x0 || !eps || !xt || !dout || !tt) {
        fail("out of memory for a batch of %d", B);
        goto free_batch;
    }
    fprintf(stderr,
            "ddpm-train: %d images %dx%dx%d from %s; U-Net %" PRId64 " parameters, %.3f GFLOP/image forward; "
            "%s at step %" PRId64 " of %" PRId64 "\n",
            r->data.n, r->data.c, r->data.s, r->data.s, o->data, r->graph.n_weights, r->graph.flops * 1e-9,
            o->resume ? "resuming" : "starting", r->st.step, o->steps);
    const int tty = isatty(2);
    double t_start = now_s(), t_ckpt = t_start, t_print = 0, train_s = 0, train_cpu = 0;
    int64_t step0 = r->st.step;
    int ok = 1;
    while (r->st.step < o->steps && !g_stop) {
        if (o->stop_after && r->st.step >= o->stop_after) {
            g_stop = -1;
            break;
        }
        double t0 = now_s(), c0 = cpu_s(), gnorm = 0;
        double loss = train_step(r, x0, eps, xt, tt, dout, &gnorm);
        train_cpu += cpu_s() - c0;
        if (isnan(loss)) {
            ok = 0;
            break;
        }
        double dt = now_s() - t0;
        train_s += dt;
        r->st.seconds += dt;
        /* running mean of the loss (started at the first loss), as shown in the progress line */
        r->st.loss_avg = r->st.step == 1 ? loss : 0.98 * r->st.loss_avg + 0.02 * loss;
        double warm = o->warmup > 0 ? (double)r->st.step / o->warmup : 1.0;
        fprintf(r->csv, "%" PRId64 ",%.6g,%.6g,%.6g\n", r->st.step, loss, o->lr * (warm < 1 ? warm : 1),
                gnorm);
        fflush(r->csv); /* a row per step: cheap next to a step, and readable while the run goes on */
        double now = now_s();
        if (!o->quiet && (now - t_print >= (tty ? 0.5 : 30) || r->st.step == o->steps)) {
            double rate = (double)(r->st.step - step0) * B / train_s;
            char eta[32];
            fmt_duration((double)(o->steps - r->st.step) * B / rate, eta, sizeof eta);
            fprintf(stderr, "%sstep %" PRId64 "/%" PRId64 "  loss %.4f  %.1f img/s  ETA %s%s",
                    tty ? "\r" : "", r->st.step, o->steps, r->st.loss_avg, rate, eta, tty ? "   " : "\n");
            t_print = now;
        }
        if ((o->ckpt_every && r->st.step % o->ckpt_every == 0) ||
            (o->ckpt_minutes > 0 && now - t_ckpt >= o->ckpt_minutes * 60)) {
            fflush(r->csv);
            if (!save_all(r)) {
                ok = 0;
                break;
            }
            t_ckpt = now_s();
        }
        if (o->sample_every && r->st.step % o->sample_every == 0 && !sample_grid(r)) {
            ok = 0;
            break;
        }
    }
    if (!o->quiet && tty)
        fputc('\n', stderr);
    fflush(r->csv);
    if (ok && save_all(r)) {
        double rate = train_s > 0 ? (double)(r->st.step - step0) * B / train_s : 0;
        if (g_stop)
            fprintf(stderr, "ddpm-train: stopped at step %" PRId64 " (%s); checkpoint %s\n", r->st.step,
                    g_stop > 0 ? (g_stop == SIGINT ? "SIGINT" : "SIGTERM") : "--stop-after", r->ckpt_path);
        fprintf(stderr,
                "ddpm-train: %" PRId64
                " steps of %d in %.1f s: %.2f img/s (training only), %.4f CPU-s/img; step %" PRId64
                ", %.0f s in total; EMA model %s\n",
                r->st.step - step0, B, train_s, rate,
                r->st.step > step0 ? train_cpu / ((double)(r->st.step - step0) * B) : 0.0, r->st.step,
                r->st.seconds, r->model_path);
        status = 0;
    }
free_batch:
    free(x0);
    free(eps);
    free(xt);
    free(dout);
    free(tt);
done:
    run_free(r);
    return status;
}
