/* data.c: IDX files (raw or gzip via zlib) and image folders (stb_image) into 8-bit (c, s, s) images,
 * with the area/bilinear resize and center crop every loader shares. */
#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* stb_image is compiled here only (PNG and JPEG); its own warnings are not ours to fix. */
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define IDX_MAX_BYTES ((size_t)1 << 31)

void dataset_free(dataset *d)
{
    if (!d)
        return;
    free(d->pix);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

/* Reads a whole raw or gzip file through zlib (gzread passes non-gzip data through unchanged). */
static ddpm_result read_maybe_gz(const char *path, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return ddpm_fail(DDPM_ERR_IO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    ddpm_result res = DDPM_OK;
    if (!buf) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= IDX_MAX_BYTES) {
                res = ddpm_fail(DDPM_ERR_FORMAT, "%s: larger than %zu bytes", path, IDX_MAX_BYTES);
                goto done;
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap *= 2;
        }
        unsigned want = (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n);
        int got = gzread(f, buf + n, want);
        if (got < 0)
            break;
        n += (size_t)got;
        if (got == 0)
            break;
    }
    int err = Z_OK;
    const char *msg = gzerror(f, &err);
    if (err != Z_OK) {
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: corrupt or truncated gzip data (%s)", path,
                        err == Z_ERRNO ? strerror(errno) : msg);
        goto done;
    }
done:
    gzclose(f);
    if (res != DDPM_OK) {
        free(buf);
        return res;
    }
    *data = buf;
    *size = n;
    return DDPM_OK;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks an IDX header: u8 data with `ndim` dims, the whole body present; dims into dims[]. */
static ddpm_result idx_header(const char *path, const uint8_t *b, size_t size, int ndim, const char *kind,
                              int64_t dims[3], const uint8_t **body)
{
    uint32_t want = 0x0800u | (uint32_t)ndim;
    if (size < 4)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: not an IDX %s file: only %zu bytes", path, kind, size);
    uint32_t magic = be32(b);
    if (magic != want)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: not an IDX %s file: magic 0x%08x, expected 0x%08x", path, kind,
                         magic, want);
    size_t head = 4 + 4 * (size_t)ndim;
    if (size < head)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: truncated IDX header (%zu bytes)", path, size);
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = be32(b + 4 + 4 * i);
        if (dims[i] < 1 || dims[i] > (1 << 30) || !ddpm_mul_ok(total, dims[i], &total))
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: bad IDX dimension %d: %" PRId64, path, i, dims[i]);
    }
    if ((uint64_t)total > size - head)
        return ddpm_fail(DDPM_ERR_FORMAT,
                         "%s: truncated IDX data: the header promises %" PRId64 " bytes, the file holds %zu",
                         path, total, size - head);
    if ((uint64_t)total < size - head)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: %zu bytes of trailing data after the IDX body", path,
                         size - head - (size_t)total);
    *body = b + head;
    return DDPM_OK;
}

static ddpm_result load_idx(const char *path, int channels, int size, dataset *d)
{
    uint8_t *buf = NULL;
    size_t n = 0;
    ddpm_result res = read_maybe_gz(path, &buf, &n);
    if (res != DDPM_OK)
        return res;
    int64_t dims[3];
    const uint8_t *body = NULL;
    res = idx_header(path, buf, n, 3, "image", dims, &body);
    if (res == DDPM_OK && (dims[1] > 65536 || dims[2] > 65536))
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: images of %" PRId64 "x%" PRId64 " are too large", path, dims[1],
                        dims[2]);
    if (res != DDPM_OK) {
        free(buf);
        return res;
    }
    int h = (int)dims[1], w = (int)dims[2];
    int64_t per = (int64_t)channels * size * size;
    d->n = (int)dims[0];
    d->c = channels;
    d->s = size;
    d->pix = malloc((size_t)(d->n * per));
    uint8_t *rgb = malloc((size_t)h * w * channels);
    if (!d->pix || !rgb) {
        free(buf);
        free(rgb);
        dataset_free(d);
        return ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory for %d images", path, d->n);
    }
    for (int i = 0; i < d->n; i++) {
        const uint8_t *src = body + (size_t)i * h * w;
        for (int p = 0; p < h * w; p++)
            for (int ch = 0; ch < channels; ch++)
                rgb[(size_t)p * channels + ch] = src[p];
        image_resize_crop(rgb, w, h, channels, size, d->pix + (size_t)i * per);
    }
    free(rgb);
    free(buf);
    return DDPM_OK;
}

ddpm_result dataset_load_labels(const char *path, dataset *d)
{
    uint8_t *buf = NULL;
    size_t n = 0;
    ddpm_result res = read_maybe_gz(path, &buf, &n);
    if (res != DDPM_OK)
        return res;
    int64_t dims[3];
    const uint8_t *body = NULL;
    res = idx_header(path, buf, n, 1, "label", dims, &body);
    if (res == DDPM_OK && dims[0] != d->n)
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: %" PRId64 " labels for %d images", path, dims[0], d->n);
    if (res == DDPM_OK) {
        free(d->labels);
        d->labels = malloc((size_t)d->n);
        if (!d->labels)
            res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", path);
        else
            memcpy(d->labels, body, (size_t)d->n);
    }
    free(buf);
    return res;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static ddpm_result load_folder(const char *dir, int channels, int size, dataset *d)
{
    ddpm_result res = DDPM_OK;
    char **names = NULL;
    int n = 0, cap = 0;
    uint8_t *file = NULL;
    DIR *dp = opendir(dir);
    if (!dp)
        return ddpm_fail(DDPM_ERR_IO, "%s: cannot open the folder: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* ., .. and hidden files */
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) {
                res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", dir);
                goto cleanup;
            }
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", dir);
            goto cleanup;
        }
        n++;
    }
    if (n == 0) {
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: the folder holds no images", dir);
        goto cleanup;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int64_t per = (int64_t)channels * size * size;
    d->n = n;
    d->c = channels;
    d->s = size;
    d->pix = malloc((size_t)(n * per));
    if (!d->pix) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory for %d images", dir, n);
        goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            res = ddpm_fail(DDPM_ERR_FORMAT, "%s: not an image file (only PNG/JPEG files belong here)", path);
            goto cleanup;
        }
        size_t fsize = 0;
        TRY(ddpm_read_file(path, (size_t)1 << 30, &file, &fsize));
        int w = 0, h = 0, comp = 0;
        uint8_t *img = fsize > (size_t)INT32_MAX
                           ? NULL
                           : stbi_load_from_memory(file, (int)fsize, &w, &h, &comp, channels);
        free(file);
        file = NULL;
        if (!img) {
            res = ddpm_fail(DDPM_ERR_FORMAT, "%s: not a PNG/JPEG image (%s)", path, stbi_failure_reason());
            goto cleanup;
        }
        image_resize_crop(img, w, h, channels, size, d->pix + (size_t)i * per);
        stbi_image_free(img);
    }
cleanup:
    closedir(dp);
    free(file);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (res != DDPM_OK)
        dataset_free(d);
    return res;
}

ddpm_result dataset_load(const char *path, int channels, int size, dataset *d)
{
    memset(d, 0, sizeof *d);
    if (channels != 1 && channels != 3)
        return ddpm_fail(DDPM_ERR_ARG, "data: %d channels (1 or 3 supported)", channels);
    if (size < 1 || size > 4096)
        return ddpm_fail(DDPM_ERR_ARG, "data: image size %d out of range", size);
    struct stat st;
    if (stat(path, &st) != 0)
        return ddpm_fail(DDPM_ERR_IO, "%s: %s", path, strerror(errno));
    ddpm_result res =
        S_ISDIR(st.st_mode) ? load_folder(path, channels, size, d) : load_idx(path, channels, size, d);
    if (res != DDPM_OK)
        return res;
    d->crc = (uint32_t)crc32(0L, Z_NULL, 0);
    size_t total = (size_t)d->n * d->c * d->s * d->s;
    for (size_t off = 0; off < total; off += 1u << 30) {
        size_t len = total - off < (1u << 30) ? total - off : (1u << 30);
        d->crc = (uint32_t)crc32(d->crc, d->pix + off, (uInt)len);
    }
    return DDPM_OK;
}

void dataset_get(const dataset *d, int i, int flip, float *out)
{
    const uint8_t *p = d->pix + (size_t)i * d->c * d->s * d->s;
    int s = d->s;
    for (int c = 0; c < d->c; c++)
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) {
                int sx = flip ? s - 1 - x : x;
                out[((size_t)c * s + y) * s + x] = (float)p[((size_t)c * s + y) * s + sx] / 127.5f - 1.0f;
            }
}

/* Weights of one axis: output pixel o (0..out-1, after the crop offset) reads source pixels
 * first[o] .. first[o] + count[o] - 1 with weights wt[o * span + j]. */
typedef struct axis_map {
    int *first, *count;
    float *wt;
    int span;
} axis_map;

static int axis_make(axis_map *m, int in, int out, double scale, int offset)
{
    /* shrinking: each output pixel averages the source interval it covers; enlarging: bilinear */
    m->span = scale < 1.0 ? (int)ceil(1.0 / scale) + 2 : 2;
    m->first = malloc(sizeof(int) * (size_t)out);
    m->count = malloc(sizeof(int) * (size_t)out);
    m->wt = calloc((size_t)out * m->span, sizeof(float));
    if (!m->first || !m->count || !m->wt)
        return 0;
    for (int o = 0; o < out; o++) {
        double X = o + offset;
        if (scale < 1.0) {
            double a = X / scale, b = (X + 1) / scale;
            int f = (int)floor(a), l = (int)ceil(b);
            if (l > in)
                l = in;
            if (f < 0)
                f = 0;
            double sum = 0;
            m->first[o] = f;
            m->count[o] = l - f > m->span ? m->span : l - f;
            for (int j = 0; j < m->count[o]; j++) {
                double lo = f + j > a ? f + j : a, hi = f + j + 1 < b ? f + j + 1 : b;
                double w = hi > lo ? hi - lo : 0;
                m->wt[o * m->span + j] = (float)w;
                sum += w;
            }
            for (int j = 0; j < m->count[o]; j++)
                m->wt[o * m->span + j] = sum > 0 ? (float)(m->wt[o * m->span + j] / sum) : 0.0f;
        } else {
            double c = (X + 0.5) / scale - 0.5;
            if (c < 0)
                c = 0;
            if (c > in - 1)
                c = in - 1;
            int f = (int)floor(c);
            if (f > in - 2)
                f = in - 2 < 0 ? 0 : in - 2;
            double fr = c - f;
            m->first[o] = f;
            m->count[o] = in > 1 ? 2 : 1;
            m->wt[o * m->span] = in > 1 ? (float)(1 - fr) : 1.0f;
            if (in > 1)
                m->wt[o * m->span + 1] = (float)fr;
        }
    }
    return 1;
}

static void axis_free(axis_map *m)
{
    free(m->first);
    free(m->count);
    free(m->wt);
}

void image_resize_crop(const uint8_t *src, int w, int h, int c, int size, uint8_t *dst)
{
    if (w == size && h == size) {
        for (int ch = 0; ch < c; ch++)
            for (int p = 0; p < size * size; p++)
                dst[(size_t)ch * size * size + p] = src[(size_t)p * c + ch];
        return;
    }
    double scale = (double)size / (w < h ? w : h);
    int sw = (int)lround(w * scale), sh = (int)lround(h * scale);
    if (sw < size)
        sw = size;
    if (sh < size)
        sh = size;
    axis_map mx = {0}, my = {0};
    float *tmp = malloc(sizeof(float) * (size_t)h * size * c);
    if (!tmp || !axis_make(&mx, w, size, scale, (sw - size) / 2) ||
        !axis_make(&my, h, size, scale, (sh - size) / 2)) {
        memset(dst, 0, (size_t)c * size * size); /* out of memory for a few KB: leave the image black */
        goto done;
    }
    /* rows first: (h, size, c) */
    for (int y = 0; y < h; y++)
        for (int o = 0; o < size; o++)
            for (int ch = 0; ch < c; ch++) {
                float acc = 0;
                for (int j = 0; j < mx.count[o]; j++)
                    acc += mx.wt[o * mx.span + j] * src[((size_t)y * w + mx.first[o] + j) * c + ch];
                tmp[((size_t)y * size + o) * c + ch] = acc;
            }
    for (int o = 0; o < size; o++)
        for (int x = 0; x < size; x++)
            for (int ch = 0; ch < c; ch++) {
                float acc = 0;
                for (int j = 0; j < my.count[o]; j++)
                    acc += my.wt[o * my.span + j] * tmp[((size_t)(my.first[o] + j) * size + x) * c + ch];
                long v = lroundf(acc);
                dst[((size_t)ch * size + o) * size + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
done:
    free(tmp);
    axis_free(&mx);
    axis_free(&my);
}
