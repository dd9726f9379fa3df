/* main.c: the ddpm-vk command: dispatch to the subcommands (sample, devices, info), --help and
 * --version, and the helpers every subcommand shares (one-line errors, strict option parsing). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: ddpm-vk <command> [options]\n"
    "\n"
    "Samples images from denoising diffusion models (DDPM, DDIM) on Vulkan GPUs or the CPU.\n"
    "\n"
    "commands:\n"
    "  sample     sample images into a PNG grid (and optionally a raw .npy)\n"
    "  devices    list the Vulkan devices\n"
    "  info       show a model's config, schedule, parameters, FLOPs and device memory\n"
    "  bench      time sampling steps (ms per step, GFLOP/s, per-layer table)\n"
    "\n"
    "  ddpm-vk <command> --help   options of a command\n"
    "  ddpm-vk --version          the version\n";

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ddpm-vk: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_unknown(const char *cmd, const char *arg)
{
    if (arg[0] == '-')
        cli_error("%s: unknown option '%s' (see ddpm-vk %s --help)", cmd, arg, cmd);
    else
        cli_error("%s: unexpected argument '%s' (see ddpm-vk %s --help)", cmd, arg, cmd);
    return CLI_USAGE;
}

int cli_flag(const char *arg, const char *name, const char *alias)
{
    return strcmp(arg, name) == 0 || (alias && strcmp(arg, alias) == 0);
}

int cli_value(int argc, char **argv, int *i, const char *name, const char *alias, const char **val)
{
    const char *arg = argv[*i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) == 0 && arg[n] == '=') {
        *val = arg + n + 1;
        return 1;
    }
    if (!cli_flag(arg, name, alias))
        return 0;
    /* A following option ("--out --quiet") is a forgotten value, not a file named "--quiet". */
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0) {
        cli_error("%s: missing argument", arg);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

/* strtol and friends skip leading blanks and accept a sign; the numbers here must be plain. */
static int starts_plain(const char *s, int allow_minus)
{
    return isdigit((unsigned char)s[0]) || (allow_minus && s[0] == '-' && isdigit((unsigned char)s[1]));
}

int cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = starts_plain(s, 1) ? strtol(s, &end, 10) : 0;
    if (!starts_plain(s, 1) || *end != '\0') {
        cli_error("%s: '%s' is not an integer", opt, s);
        return 0;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        cli_error("%s: %s is out of range (%ld to %ld)", opt, s, lo, hi);
        return 0;
    }
    *out = (int)v;
    return 1;
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = starts_plain(s, 0) ? strtoull(s, &end, 10) : 0;
    if (!starts_plain(s, 0) || *end != '\0') {
        cli_error("%s: '%s' is not a non-negative integer", opt, s);
        return 0;
    }
    if (errno == ERANGE) {
        cli_error("%s: %s is out of range (0 to %" PRIu64 ")", opt, s, UINT64_MAX);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    int plain = starts_plain(s, 1) || (s[0] == '.' && isdigit((unsigned char)s[1])) ||
                (s[0] == '-' && s[1] == '.' && isdigit((unsigned char)s[2]));
    errno = 0;
    double v = plain ? strtod(s, &end) : 0.0;
    if (!plain || *end != '\0' || !isfinite(v)) {
        cli_error("%s: '%s' is not a number", opt, s);
        return 0;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        cli_error("%s: %s is out of range (%g to %g)", opt, s, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

int cli_parse_precision(const char *s, int *out)
{
    if (strcmp(s, "auto") == 0)
        *out = 0;
    else if (strcmp(s, "fp32") == 0)
        *out = 32;
    else if (strcmp(s, "fp16") == 0)
        *out = 16;
    else {
        cli_error("--precision: '%s' is not auto, fp32 or fp16", s);
        return 0;
    }
    return 1;
}

int cli_parse_limits(const char *s, int *out)
{
    if (strcmp(s, "default") == 0)
        *out = 0;
    else if (strcmp(s, "baseline") == 0)
        *out = 1;
    else {
        cli_error("--limits: '%s' is not default or baseline", s);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    static char help_arg[] = "--help";
    char *help_argv[3];
    if (argc < 2) {
        fputs(usage, stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (cli_flag(cmd, "--help", "-h")) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    if (cli_flag(cmd, "--version", "-V")) {
        printf("ddpm-vk %s\n", DDPM_VERSION);
        return CLI_OK;
    }
    if (strcmp(cmd, "help") == 0) {
        if (argc == 2) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        /* "ddpm-vk help sample" is "ddpm-vk sample --help" */
        help_argv[0] = argv[2];
        help_argv[1] = help_arg;
        help_argv[2] = NULL;
        argv = help_argv;
        argc = 2;
        cmd = argv[0];
    } else {
        argv++;
        argc--;
    }
    if (strcmp(cmd, "sample") == 0)
        return cli_sample(argc, argv);
    if (strcmp(cmd, "devices") == 0)
        return cli_devices(argc, argv);
    if (strcmp(cmd, "info") == 0)
        return cli_info(argc, argv);
    if (strcmp(cmd, "bench") == 0)
        return cli_bench(argc, argv);
    if (cmd[0] == '-')
        cli_error("unknown option '%s' (see ddpm-vk --help)", cmd);
    else
        cli_error("unknown command '%s' (commands: sample, devices, info, bench)", cmd);
    return CLI_USAGE;
}
