/* common.c: thread-local error messages, result names, checked allocation and whole-file I/O.
 * Atomic writes go to a temporary name, are fsync'ed, then renamed over the target. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local char last_error[512];

const char *ddpm_result_string(ddpm_result r)
{
    switch (r) {
    case DDPM_OK: return "ok";
    case DDPM_ERR_ARG: return "bad argument";
    case DDPM_ERR_IO: return "I/O error";
    case DDPM_ERR_FORMAT: return "malformed file";
    case DDPM_ERR_MODEL: return "weights do not match the model";
    case DDPM_ERR_NOMEM: return "out of memory";
    case DDPM_ERR_VULKAN: return "Vulkan error";
    case DDPM_ERR_NO_DEVICE: return "no such device";
    case DDPM_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown error";
}

const char *ddpm_last_error(void)
{
    return last_error;
}

ddpm_result ddpm_fail(ddpm_result code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    for (char *p = last_error; *p; p++) /* keep it one line */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return code;
}

int ddpm_mul_ok(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0)
        return 0;
    if (a != 0 && b > INT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

void *ddpm_calloc(size_t n, size_t size)
{
    void *p = (n && size) ? calloc(n, size) : calloc(1, 1);
    if (!p)
        ddpm_fail(DDPM_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

ddpm_result ddpm_read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ddpm_fail(DDPM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ddpm_fail(DDPM_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: file too large (%lld bytes)", path, (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return ddpm_fail(DDPM_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    if (fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return ddpm_fail(DDPM_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    *data = buf;
    *size = n;
    return DDPM_OK;
}

ddpm_result ddpm_write_file_atomic(const char *path, const void *data, size_t size)
{
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp)
        return ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        ddpm_result r = ddpm_fail(DDPM_ERR_IO, "%s: %s", path, strerror(errno));
        free(tmp);
        return r;
    }
    const uint8_t *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
    int ok = left == 0 && fsync(fd) == 0;
    int err = errno;
    ok = (close(fd) == 0) && ok;
    if (ok && rename(tmp, path) == 0) {
        free(tmp);
        return DDPM_OK;
    }
    if (ok)
        err = errno;
    unlink(tmp);
    free(tmp);
    return ddpm_fail(DDPM_ERR_IO, "%s: write failed: %s", path, strerror(err));
}
