/* sample.c: `ddpm-vk sample`: validates every option, loads the model (and an optional x_T from
 * .npy), runs ddpm_sample with a progress line, then writes the PNG grid (and raw .npy) atomically. */
#include "cli.h"
#include "common.h"
#include "image.h"
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLI_MAX_IMAGES 65536
#define CLI_MAX_STEPS 1000000

static const char usage[] =
    "usage: ddpm-vk sample [options]\n"
    "\n"
    "Samples images and writes them as a PNG grid.\n"
    "  --model FILE       ddpm-vk safetensors weights (default: " DDPM_DEFAULT_MODEL ")\n"
    "  --device D         cpu, gpu (the best Vulkan GPU), a Vulkan device index or name substring\n"
    "                     (default: $DDPM_DEVICE, else the best GPU, else cpu; see ddpm-vk devices)\n"
    "  --sampler S        ddpm or ddim (default: ddpm)\n"
    "  --steps N          sampling steps (default: every training step for ddpm, 50 for ddim)\n"
    "  --eta X            ddim noise in [0, 1] (default: 0, deterministic)\n"
    "  --seed S           random seed, 0 to 2^64-1 (default: 0); the same seed gives the same images on\n"
    "                     every device\n"
    "  -n N               number of images, 1 to 65536 (default: 1)\n"
    "  --out FILE         the PNG grid (default: samples.png)\n"
    "  --spacing S        timestep spacing: uniform, quad, leading, trailing or linspace\n"
    "                     (default: leading for ddim, every step for ddpm)\n"
    "  --variance V       ddpm variance: fixed_small or fixed_large (default: the model's)\n"
    "  --clip, --no-clip  clip the predicted x_0 to [-1, 1] or not (default: the model's)\n"
    "  --init FILE.npy    start from this x_T, float32 (n, C, H, W), instead of seeded noise\n"
    "  --save-raw FILE    also write the samples as float32 .npy (n, C, H, W) in [-1, 1]\n"
    "  --precision P      Vulkan storage: auto (fp16 on GPUs with 16-bit storage, else fp32), fp32 or fp16\n"
    "  --limits L         Vulkan limits: default (the device's) or baseline (clamped to the Android\n"
    "                     baseline 2022 floor: 16 KiB shared memory, 128 invocations, 128 MiB buffers)\n"
    "  --verbose          also print device memory, pipeline creation / cache and the time to first step\n"
    "  --quiet            no progress line or messages, only errors\n"
    "  --help             this text\n"
    "Exit status: 0 ok, 1 failure, 2 bad usage. Output files are written whole or not at all.\n";

typedef struct sample_args {
    const char *model, *device, *out, *init, *raw;
    ddpm_sample_opts opts;
    int eta_given, quiet, verbose;
} sample_args;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct progress_state {
    int show;         /* draw the progress line (stderr is a terminal and not --quiet) */
    int quiet;        /* no log messages either */
    int verbose;      /* --verbose: time to first step */
    double t_start;   /* the command started (before the model is loaded) */
    int drawn;        /* a progress line is on screen without its newline */
    double t0;        /* ddpm_sample called */
    double t1;        /* step 1 done: the rate is taken from here on, without the start-up cost */
    double last_draw; /* redraw at most 10 times a second */
} progress_state;

static void format_duration(char *buf, size_t cap, double s)
{
    long t = s < 0 ? 0 : s > 3.6e8 ? 360000000L : (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
}

static void end_progress_line(progress_state *p)
{
    if (p->drawn) {
        fputc('\n', stderr);
        p->drawn = 0;
    }
}

/* "step 12/50  3.4 it/s  ETA 0:11", redrawn in place; returns non-zero to cancel after Ctrl-C. */
static int on_progress(void *user, int step, int steps)
{
    progress_state *p = user;
    double now = now_seconds();
    if (step == 1) {
        p->t1 = now;
        if (p->verbose && !p->quiet) {
            end_progress_line(p);
            fprintf(stderr, "ddpm-vk: time to first step: %.1f ms (of which model load %.1f ms)\n",
                    (now - p->t_start) * 1e3, (p->t0 - p->t_start) * 1e3);
        }
    }
    if (p->show && step > 0 && (step == steps || step == 1 || now - p->last_draw >= 0.1)) {
        double dt = step > 1 ? now - p->t1 : now - p->t0;
        double rate = dt > 0 ? (step > 1 ? step - 1 : 1) / dt : 0.0;
        char eta[32] = "?";
        p->last_draw = now;
        if (rate > 0)
            format_duration(eta, sizeof eta, (steps - step) / rate);
        fprintf(stderr, "\rstep %d/%d  %.1f it/s  ETA %s   ", step, steps, rate, eta);
        fflush(stderr);
        p->drawn = 1;
    }
    return interrupted != 0;
}

static void on_log(void *user, const char *msg)
{
    progress_state *p = user;
    if (p->quiet)
        return;
    end_progress_line(p);
    fprintf(stderr, "ddpm-vk: %s\n", msg);
}

/* Parses argv into a; returns CLI_OK, or the exit status after printing the one error line
 * (CLI_OK with *help set when --help was asked). */
static int parse_args(int argc, char **argv, sample_args *a, int *help)
{
    *help = 0;
    ddpm_sample_opts_default(&a->opts);
    a->model = DDPM_DEFAULT_MODEL;
    a->out = "samples.png";
    const char *variance_opt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        int k;
        double d;
        ddpm_sample_opts *o = &a->opts;
#define VALUE(name, alias) ((k = cli_value(argc, argv, &i, name, alias, &v)) != 0)
        if (cli_flag(arg, "--help", "-h")) {
            *help = 1;
            return CLI_OK;
        } else if (cli_flag(arg, "--quiet", "-q")) {
            a->quiet = 1;
        } else if (cli_flag(arg, "--verbose", "-v")) {
            a->verbose = 1;
            o->verbose = 1;
        } else if (VALUE("--precision", NULL)) {
            if (k < 0 || !cli_parse_precision(v, &o->precision))
                return CLI_USAGE;
        } else if (VALUE("--limits", NULL)) {
            if (k < 0 || !cli_parse_limits(v, &o->baseline_limits))
                return CLI_USAGE;
        } else if (cli_flag(arg, "--clip", NULL)) {
            o->clip_sample = 1;
        } else if (cli_flag(arg, "--no-clip", NULL)) {
            o->clip_sample = 0;
        } else if (VALUE("--model", "-m")) {
            if (k < 0)
                return CLI_USAGE;
            a->model = v;
        } else if (VALUE("--device", "-d")) {
            if (k < 0)
                return CLI_USAGE;
            if (!v[0]) {
                cli_error("--device: empty device name");
                return CLI_USAGE;
            }
            a->device = v;
        } else if (VALUE("--sampler", NULL)) {
            if (k < 0)
                return CLI_USAGE;
            if (strcmp(v, "ddpm") == 0)
                o->sampler = DDPM_SAMPLER_DDPM;
            else if (strcmp(v, "ddim") == 0)
                o->sampler = DDPM_SAMPLER_DDIM;
            else {
                cli_error("--sampler: unknown sampler '%s' (ddpm or ddim)", v);
                return CLI_USAGE;
            }
        } else if (VALUE("--steps", NULL)) {
            if (k < 0 || !cli_parse_int("--steps", v, 1, CLI_MAX_STEPS, &o->steps))
                return CLI_USAGE;
        } else if (VALUE("--eta", NULL)) {
            if (k < 0 || !cli_parse_double("--eta", v, 0.0, 1.0, &d))
                return CLI_USAGE;
            o->eta = (float)d;
            a->eta_given = 1;
        } else if (VALUE("--seed", NULL)) {
            if (k < 0 || !cli_parse_u64("--seed", v, &o->seed))
                return CLI_USAGE;
        } else if (VALUE("-n", "--num")) {
            if (k < 0 || !cli_parse_int("-n", v, 1, CLI_MAX_IMAGES, &o->n))
                return CLI_USAGE;
        } else if (VALUE("--out", "-o")) {
            if (k < 0)
                return CLI_USAGE;
            a->out = v;
        } else if (VALUE("--spacing", NULL)) {
            static const char *const names[] = {"uniform", "quad", "leading", "trailing", "linspace"};
            static const ddpm_spacing values[] = {DDPM_SPACING_UNIFORM, DDPM_SPACING_QUAD,
                                                  DDPM_SPACING_LEADING, DDPM_SPACING_TRAILING,
                                                  DDPM_SPACING_LINSPACE};
            if (k < 0)
                return CLI_USAGE;
            size_t j = 0;
            while (j < DDPM_ARRAY_LEN(names) && strcmp(v, names[j]) != 0)
                j++;
            if (j == DDPM_ARRAY_LEN(names)) {
                cli_error("--spacing: unknown spacing '%s' (uniform, quad, leading, trailing or linspace)",
                          v);
                return CLI_USAGE;
            }
            o->spacing = values[j];
        } else if (VALUE("--variance", NULL)) {
            if (k < 0)
                return CLI_USAGE;
            if (strcmp(v, "fixed_small") == 0)
                o->variance = 0;
            else if (strcmp(v, "fixed_large") == 0)
                o->variance = 1;
            else {
                cli_error("--variance: unknown variance '%s' (fixed_small or fixed_large)", v);
                return CLI_USAGE;
            }
            variance_opt = v;
        } else if (VALUE("--init", NULL)) {
            if (k < 0)
                return CLI_USAGE;
            a->init = v;
        } else if (VALUE("--save-raw", NULL)) {
            if (k < 0)
                return CLI_USAGE;
            a->raw = v;
        } else {
            return cli_unknown("sample", arg);
        }
#undef VALUE
    }
    if (a->quiet && a->verbose) {
        cli_error("--verbose and --quiet: choose one");
        return CLI_USAGE;
    }
    if (a->eta_given && a->opts.sampler != DDPM_SAMPLER_DDIM) {
        cli_error("--eta: only applies to --sampler ddim");
        return CLI_USAGE;
    }
    if (variance_opt && a->opts.sampler != DDPM_SAMPLER_DDPM) {
        cli_error("--variance: only applies to --sampler ddpm (ddim's noise is set by --eta)");
        return CLI_USAGE;
    }
    if (!a->out[0] || (a->raw && !a->raw[0])) {
        cli_error("%s: empty file name", a->out[0] ? "--save-raw" : "--out");
        return CLI_USAGE;
    }
    if (a->raw && strcmp(a->raw, a->out) == 0) {
        cli_error("--save-raw: same file as --out (%s)", a->out);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* The directory of an output file must exist and be writable before any minutes of sampling. */
static int check_writable(const char *opt, const char *path)
{
    char *dir = strdup(path);
    if (!dir) {
        cli_error("out of memory");
        return 0;
    }
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    struct stat st;
    int ok = access(d, W_OK | X_OK) == 0;
    if (!ok)
        cli_error("%s: cannot write into directory '%s': %s", opt, d, strerror(errno));
    else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        cli_error("%s: '%s' is a directory", opt, path);
        ok = 0;
    }
    free(dir);
    return ok;
}

/* Loads --init and checks it against (n, C, H, W) (C, H, W < 0: not known yet). */
static int check_init(const sample_args *a, const npy_array *x, int c, int h, int w)
{
    const int64_t *s = x->shape;
    if (x->ndim != 4 || s[0] != a->opts.n || (c >= 0 && (s[1] != c || s[2] != h || s[3] != w))) {
        char want[96], got[96] = "";
        if (c >= 0)
            snprintf(want, sizeof want, "(%d, %d, %d, %d)", a->opts.n, c, h, w);
        else
            snprintf(want, sizeof want, "(%d, C, H, W)", a->opts.n);
        size_t l = 0;
        for (int i = 0; i < x->ndim; i++)
            l += (size_t)snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)s[i]);
        cli_error("--init: %s has shape (%s), expected %s", a->init, got, want);
        return 0;
    }
    return 1;
}

int cli_sample(int argc, char **argv)
{
    double t_start = now_seconds();
    sample_args a;
    memset(&a, 0, sizeof a);
    int help;
    int rc = parse_args(argc, argv, &a, &help);
    if (rc != CLI_OK)
        return rc;
    if (help) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    if (!check_writable("--out", a.out) || (a.raw && !check_writable("--save-raw", a.raw)))
        return CLI_FAIL;

    npy_array init = {0};
    ddpm_model *m = NULL;
    float *x = NULL;
    uint8_t *png = NULL, *raw = NULL;
    size_t png_size = 0, raw_size = 0;
    rc = CLI_FAIL;
    ddpm_result r;
    if (a.init) {
        if ((r = npy_read(a.init, &init)) != DDPM_OK) {
            cli_error("--init: %s", ddpm_last_error());
            goto cleanup;
        }
        if (!check_init(&a, &init, -1, -1, -1))
            goto cleanup;
        for (int64_t i = 0; i < init.numel; i++)
            if (!isfinite(init.data[i])) {
                cli_error("--init: %s holds NaN or infinity at element %lld", a.init, (long long)i);
                goto cleanup;
            }
    }
    if ((r = ddpm_model_load(a.model, &m)) != DDPM_OK) {
        cli_error("cannot load model: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        goto cleanup;
    }
    int c, h, w;
    ddpm_model_image_shape(m, &c, &h, &w);
    if (a.init && !check_init(&a, &init, c, h, w))
        goto cleanup;
    int64_t numel;
    if (!ddpm_mul_ok((int64_t)a.opts.n * c, (int64_t)h * w, &numel) || numel > ((int64_t)1 << 31) ||
        !(x = malloc((size_t)numel * sizeof *x))) {
        cli_error("-n: %d images of %dx%dx%d do not fit in memory", a.opts.n, c, h, w);
        goto cleanup;
    }

    progress_state ps = {.show = !a.quiet && isatty(STDERR_FILENO),
                         .quiet = a.quiet,
                         .verbose = a.verbose,
                         .t_start = t_start};
    a.opts.device = a.device;
    a.opts.init = init.data;
    a.opts.progress = on_progress;
    a.opts.log = on_log;
    a.opts.user = &ps;
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C ends the process at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    ps.t0 = now_seconds();
    r = ddpm_sample(m, &a.opts, x);
    double seconds = now_seconds() - ps.t0;
    sigaction(SIGINT, &old_sa, NULL);
    end_progress_line(&ps);
    if (interrupted) {
        cli_error("interrupted: no output written");
        rc = 130;
        goto cleanup;
    }
    if (r != DDPM_OK) {
        cli_error("sampling failed: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        goto cleanup;
    }

    /* Encode both outputs before writing either, so a failure leaves neither behind. */
    int64_t shape[4] = {a.opts.n, c, h, w};
    if ((r = image_grid_png(x, a.opts.n, c, h, w, &png, &png_size)) != DDPM_OK ||
        (a.raw && (r = npy_encode(x, 4, shape, &raw, &raw_size)) != DDPM_OK)) {
        cli_error("cannot encode the output: %s", ddpm_last_error());
        goto cleanup;
    }
    if (a.raw && (r = ddpm_write_file_atomic(a.raw, raw, raw_size)) != DDPM_OK) {
        cli_error("--save-raw: %s", ddpm_last_error());
        goto cleanup;
    }
    if ((r = ddpm_write_file_atomic(a.out, png, png_size)) != DDPM_OK) {
        cli_error("--out: %s", ddpm_last_error());
        if (a.raw)
            unlink(a.raw);
        goto cleanup;
    }
    if (!a.quiet)
        fprintf(stderr, "ddpm-vk: wrote %s%s%s (%d image%s %dx%dx%d, %.2f s)\n", a.out, a.raw ? " and " : "",
                a.raw ? a.raw : "", a.opts.n, a.opts.n == 1 ? "" : "s", c, h, w, seconds);
    rc = CLI_OK;

cleanup:
    free(png);
    free(raw);
    free(x);
    ddpm_model_free(m);
    npy_free(&init);
    return rc;
}
