/* cli.h: the ddpm-vk command's subcommands and the helpers they share: one-line errors, strict
 * option and number parsing. Exit status: 0 ok, 1 a failure, 2 a usage error. */
#ifndef DDPM_CLI_H
#define DDPM_CLI_H

#include <stdint.h>

#ifndef DDPM_VERSION
#define DDPM_VERSION "unknown"
#endif
#ifndef DDPM_DEFAULT_MODEL
#define DDPM_DEFAULT_MODEL "assets/weights/fashion-mnist.safetensors"
#endif

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Subcommands: argv[0] is the subcommand name; they return the exit status. */
int cli_sample(int argc, char **argv);
int cli_devices(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_bench(int argc, char **argv);

/* Prints "ddpm-vk: <message>" and a newline on stderr (the message must be one line). */
void cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Option matching at argv[*i]. cli_value: 1 when argv[*i] is `name` (or `alias`, may be NULL), with
 * *val set from "--name VALUE" (advancing *i) or "--name=VALUE"; -1 (error printed) when the value is
 * missing; 0 when argv[*i] is another option. cli_flag: 1 when argv[*i] is exactly `name` or `alias`. */
int cli_value(int argc, char **argv, int *i, const char *name, const char *alias, const char **val);
int cli_flag(const char *arg, const char *name, const char *alias);

/* Strict numbers: the whole string must be a decimal number inside [lo, hi]; otherwise an error
 * naming `opt` is printed and 0 returned. */
int cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out);
int cli_parse_u64(const char *opt, const char *s, uint64_t *out);
int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out);

/* --precision auto|fp32|fp16 -> 0, 32, 16; --limits default|baseline -> 0, 1. 0 (error printed) when
 * the value is none of those. */
int cli_parse_precision(const char *s, int *out);
int cli_parse_limits(const char *s, int *out);

/* Prints the unknown-option error for argv[i] of subcommand cmd and returns CLI_USAGE. */
int cli_unknown(const char *cmd, const char *arg);

#endif
