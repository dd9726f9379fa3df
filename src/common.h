/* common.h: internal helpers shared by every part of libddpm: error reporting and checked sizes.
 * Library functions return ddpm_result and record a one-line message with ddpm_fail(). */
#ifndef DDPM_COMMON_H
#define DDPM_COMMON_H

#include "ddpm.h"
#include <stddef.h>
#include <stdint.h>

/* Records a formatted one-line message for ddpm_last_error() and returns code. */
ddpm_result ddpm_fail(ddpm_result code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Evaluates a ddpm_result expression; on failure stores it in `res` and jumps to `cleanup`. */
#define TRY(expr)                                                                                            \
    do {                                                                                                     \
        ddpm_result try_r_ = (expr);                                                                         \
        if (try_r_ != DDPM_OK) {                                                                             \
            res = try_r_;                                                                                    \
            goto cleanup;                                                                                    \
        }                                                                                                    \
    } while (0)

/* a * b into *out, returning 0 on overflow of int64. */
int ddpm_mul_ok(int64_t a, int64_t b, int64_t *out);

/* calloc that records DDPM_ERR_NOMEM with a message on failure (returns NULL). */
void *ddpm_calloc(size_t n, size_t size);

/* The largest weight file read into memory (16 GiB; the address space on 32-bit hosts). */
#if SIZE_MAX > 0xffffffffu
#define DDPM_MAX_WEIGHT_FILE ((size_t)16 << 30)
#else
#define DDPM_MAX_WEIGHT_FILE SIZE_MAX
#endif

/* Reads a whole file; *data is malloc'ed (caller frees). Refuses files larger than max_bytes. */
ddpm_result ddpm_read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *size);

/* Writes data to path atomically: path.tmp.<pid>, fsync, rename. Nothing is left on failure. */
ddpm_result ddpm_write_file_atomic(const char *path, const void *data, size_t size);

#define DDPM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
