/* npy.c: NumPy .npy float32 files: a reader that checks everything it is given (magic, version,
 * header length, the header's Python dict literal, data size) and an atomic writer. */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_FILE ((size_t)1 << 32)
#define NPY_MAX_HEADER 65536 /* numpy itself refuses headers above 10000 bytes by default */

/* A cursor over the header text for the dict parser. */
typedef struct cursor {
    const char *p, *end;
    const char *what;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int accept(cursor *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static ddpm_result bad_header(const cursor *c, const char *why)
{
    return ddpm_fail(DDPM_ERR_FORMAT, "%s: bad .npy header: %s", c->what, why);
}

/* A Python string literal in single or double quotes, without escapes, into out (NUL-terminated). */
static ddpm_result parse_string(cursor *c, char *out, size_t cap)
{
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return bad_header(c, "expected a quoted string");
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || (unsigned char)*c->p < 0x20 || n + 1 >= cap)
            return bad_header(c, "unexpected string content");
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return bad_header(c, "unterminated string");
    c->p++;
    out[n] = '\0';
    return DDPM_OK;
}

static int match_word(cursor *c, const char *word)
{
    skip_ws(c);
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, word, n) == 0) {
        const char *after = c->p + n;
        if (after < c->end && ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
                               (*after >= '0' && *after <= '9') || *after == '_'))
            return 0;
        c->p = after;
        return 1;
    }
    return 0;
}

/* A tuple of 0..NPY_MAX_DIMS non-negative decimal integers: (), (3,), (3, 4), trailing comma allowed. */
static ddpm_result parse_shape(cursor *c, int *ndim, int64_t *shape)
{
    if (!accept(c, '('))
        return bad_header(c, "'shape' is not a tuple");
    int n = 0;
    for (;;) {
        skip_ws(c);
        if (accept(c, ')'))
            break;
        if (n == NPY_MAX_DIMS)
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy array has more than %d dimensions", c->what,
                             NPY_MAX_DIMS);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return bad_header(c, "'shape' holds something other than a non-negative integer");
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (INT64_MAX - 9) / 10)
                return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy shape dimension too large", c->what);
            v = v * 10 + (*c->p++ - '0');
        }
        shape[n++] = v;
        if (accept(c, ','))
            continue;
        if (accept(c, ')'))
            break;
        return bad_header(c, "expected ',' or ')' in 'shape'");
    }
    /* numpy writes (3,) for one dimension; the bare (3) is accepted too. */
    *ndim = n;
    return DDPM_OK;
}

/* The header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (...), } in any key order. */
static ddpm_result parse_dict(cursor *c, int *ndim, int64_t *shape)
{
    int have_descr = 0, have_order = 0, have_shape = 0;
    ddpm_result r;
    if (!accept(c, '{'))
        return bad_header(c, "not a dict");
    for (;;) {
        if (accept(c, '}'))
            break;
        char key[32];
        if ((r = parse_string(c, key, sizeof key)) != DDPM_OK)
            return r;
        if (!accept(c, ':'))
            return bad_header(c, "expected ':' after a key");
        if (strcmp(key, "descr") == 0 && !have_descr) {
            char descr[32];
            if ((r = parse_string(c, descr, sizeof descr)) != DDPM_OK)
                return r;
            if (strcmp(descr, "<f4") != 0)
                return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy dtype '%s' is not float32 ('<f4')", c->what,
                                 descr);
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if (match_word(c, "True"))
                return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy array is in Fortran order (C order needed)",
                                 c->what);
            if (!match_word(c, "False"))
                return bad_header(c, "'fortran_order' is not True or False");
            have_order = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if ((r = parse_shape(c, ndim, shape)) != DDPM_OK)
                return r;
            have_shape = 1;
        } else {
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: bad .npy header: unknown or repeated key '%s'", c->what,
                             key);
        }
        if (accept(c, ','))
            continue;
        if (accept(c, '}'))
            break;
        return bad_header(c, "expected ',' or '}'");
    }
    skip_ws(c);
    if (c->p != c->end)
        return bad_header(c, "text after the dict");
    if (!have_descr || !have_order || !have_shape)
        return bad_header(c, "'descr', 'fortran_order' or 'shape' missing");
    return DDPM_OK;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

ddpm_result npy_parse(const uint8_t *buf, size_t size, const char *what, npy_array *a)
{
    memset(a, 0, sizeof *a);
    if (size < NPY_MAGIC_LEN + 2 || memcmp(buf, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: not a .npy file (bad magic)", what);
    int major = buf[6], minor = buf[7];
    size_t pre, hlen;
    if (major == 1 && minor == 0) {
        pre = 10;
        if (size < pre)
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: truncated .npy header", what);
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        pre = 12;
        if (size < pre)
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: truncated .npy header", what);
        hlen = le32(buf + 8);
    } else {
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: unsupported .npy version %d.%d", what, major, minor);
    }
    if (hlen > NPY_MAX_HEADER)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy header length %zu is absurd", what, hlen);
    if (hlen > size - pre)
        return ddpm_fail(DDPM_ERR_FORMAT,
                         "%s: .npy header length %zu runs past the end of the file (%zu bytes)", what, hlen,
                         size);
    cursor c = {(const char *)buf + pre, (const char *)buf + pre + hlen, what};
    for (const char *p = c.p; p < c.end; p++)
        if (*p == '\0')
            return bad_header(&c, "NUL byte in the header");
    int ndim = 0;
    int64_t shape[NPY_MAX_DIMS];
    ddpm_result r = parse_dict(&c, &ndim, shape);
    if (r != DDPM_OK)
        return r;
    int64_t numel = 1, bytes = -1;
    for (int i = 0; i < ndim; i++)
        if (!ddpm_mul_ok(numel, shape[i], &numel))
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy shape is absurd (element count overflows)", what);
    if (!ddpm_mul_ok(numel, 4, &bytes) || (uint64_t)bytes != (uint64_t)(size - pre - hlen))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: .npy data is %zu bytes but the shape needs %s%lld", what,
                         size - pre - hlen, bytes < 0 ? "more than " : "",
                         (long long)(bytes < 0 ? INT64_MAX : bytes));
    float *data = malloc(numel ? (size_t)bytes : 1);
    if (!data)
        return ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory for %lld floats", what, (long long)numel);
    const uint8_t *src = buf + pre + hlen;
    for (int64_t i = 0; i < numel; i++) {
        uint32_t u = le32(src + 4 * i);
        memcpy(&data[i], &u, 4);
    }
    a->ndim = ndim;
    for (int i = 0; i < NPY_MAX_DIMS; i++)
        a->shape[i] = i < ndim ? shape[i] : 1;
    a->numel = numel;
    a->data = data;
    return DDPM_OK;
}

ddpm_result npy_read(const char *path, npy_array *a)
{
    memset(a, 0, sizeof *a);
    uint8_t *buf;
    size_t size;
    ddpm_result r = ddpm_read_file(path, NPY_MAX_FILE, &buf, &size);
    if (r != DDPM_OK)
        return r;
    r = npy_parse(buf, size, path, a);
    free(buf);
    return r;
}

void npy_free(npy_array *a)
{
    if (!a)
        return;
    free(a->data);
    a->data = NULL;
    a->numel = 0;
}

ddpm_result npy_encode(const float *data, int ndim, const int64_t *shape, uint8_t **out, size_t *size)
{
    *out = NULL;
    *size = 0;
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return ddpm_fail(DDPM_ERR_ARG, "npy: %d dimensions (at most %d)", ndim, NPY_MAX_DIMS);
    int64_t numel = 1, bytes;
    char dims[160] = "";
    size_t dl = 0;
    for (int i = 0; i < ndim; i++) {
        if (!ddpm_mul_ok(numel, shape[i], &numel))
            return ddpm_fail(DDPM_ERR_ARG, "npy: bad shape");
        dl += (size_t)snprintf(dims + dl, sizeof dims - dl, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (ndim == 1)
        dl += (size_t)snprintf(dims + dl, sizeof dims - dl, ",");
    if (!ddpm_mul_ok(numel, 4, &bytes) || (uint64_t)bytes > NPY_MAX_FILE)
        return ddpm_fail(DDPM_ERR_ARG, "npy: array too large");
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    /* Version 1.0: magic, 2 version bytes, u16 header length; the header (dict, space padding, '\n')
     * makes the data start at a multiple of 64 bytes, as numpy does. */
    size_t pre = 10, hlen = (size_t)n + 1;
    hlen += (64 - (pre + hlen) % 64) % 64;
    size_t total = pre + hlen + (size_t)bytes;
    uint8_t *buf = malloc(total);
    if (!buf)
        return ddpm_fail(DDPM_ERR_NOMEM, "npy: out of memory for %zu bytes", total);
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (uint8_t)(hlen & 0xff);
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + pre, dict, (size_t)n);
    memset(buf + pre + n, ' ', hlen - (size_t)n - 1);
    buf[pre + hlen - 1] = '\n';
    uint8_t *dst = buf + pre + hlen;
    for (int64_t i = 0; i < numel; i++) {
        uint32_t u;
        memcpy(&u, &data[i], 4);
        dst[4 * i + 0] = (uint8_t)u;
        dst[4 * i + 1] = (uint8_t)(u >> 8);
        dst[4 * i + 2] = (uint8_t)(u >> 16);
        dst[4 * i + 3] = (uint8_t)(u >> 24);
    }
    *out = buf;
    *size = total;
    return DDPM_OK;
}

ddpm_result npy_write(const char *path, const float *data, int ndim, const int64_t *shape)
{
    uint8_t *buf;
    size_t size;
    ddpm_result r = npy_encode(data, ndim, shape, &buf, &size);
    if (r != DDPM_OK)
        return r;
    r = ddpm_write_file_atomic(path, buf, size);
    free(buf);
    return r;
}
