/* image.c: PNG grids of sampled images: float (n, C, H, W) in [-1, 1] -> 8-bit tiles in a near-square
 * grid, encoded in memory by stb_image_write and saved atomically with ddpm_write_file_atomic. */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* stb_image_write is compiled here only, with static linkage (its own file functions stay unused):
 * the library writes through ddpm_write_file_atomic so a failure never leaves a partial file. */
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define GRID_MAX_SIDE (1 << 24)
#define GRID_MAX_BYTES ((int64_t)1 << 31)

ddpm_result image_grid_size(int n, int h, int w, int *cols, int *rows, int *grid_w, int *grid_h)
{
    if (n < 1 || h < 1 || w < 1)
        return ddpm_fail(DDPM_ERR_ARG, "image grid: bad size n=%d h=%d w=%d", n, h, w);
    int c = 1;
    while ((int64_t)c * c < n)
        c++;
    int r = (n + c - 1) / c;
    int64_t gw = (int64_t)c * w + (int64_t)(c + 1) * DDPM_GRID_BORDER;
    int64_t gh = (int64_t)r * h + (int64_t)(r + 1) * DDPM_GRID_BORDER;
    if (gw > GRID_MAX_SIDE || gh > GRID_MAX_SIDE || gw * gh * 4 > GRID_MAX_BYTES)
        return ddpm_fail(DDPM_ERR_NOMEM, "image grid: %lld x %lld pixels is too large for a PNG",
                         (long long)gw, (long long)gh);
    *cols = c;
    *rows = r;
    *grid_w = (int)gw;
    *grid_h = (int)gh;
    return DDPM_OK;
}

/* [-1, 1] -> 0..255, rounded to nearest; NaN and below -1 give 0, above 1 gives 255. */
static uint8_t to_byte(float x)
{
    float v = (x + 1.0f) * 0.5f;
    if (!(v > 0.0f))
        return 0;
    if (v > 1.0f)
        v = 1.0f;
    return (uint8_t)floorf(v * 255.0f + 0.5f);
}

void image_grid_pixels(uint8_t *pixels, const float *x, int n, int c, int h, int w)
{
    int cols, rows, gw, gh;
    if (image_grid_size(n, h, w, &cols, &rows, &gw, &gh) != DDPM_OK)
        return;
    const int b = DDPM_GRID_BORDER;
    memset(pixels, 0, (size_t)gw * gh * c);
    for (int k = 0; k < n; k++) {
        const float *img = x + (size_t)k * c * h * w; /* (c, h, w) */
        size_t x0 = (size_t)(k % cols) * (w + b) + b, y0 = (size_t)(k / cols) * (h + b) + b;
        for (int y = 0; y < h; y++) {
            uint8_t *row = pixels + ((y0 + y) * gw + x0) * c; /* (w, c) interleaved */
            for (int ch = 0; ch < c; ch++) {
                const float *src = img + ((size_t)ch * h + y) * w;
                for (int i = 0; i < w; i++)
                    row[(size_t)i * c + ch] = to_byte(src[i]);
            }
        }
    }
}

typedef struct membuf {
    uint8_t *data;
    size_t size, cap;
    int failed;
} membuf;

/* stb_image_write's sink: appends to a growing buffer; remembers an allocation failure. */
static void membuf_append(void *ctx, void *data, int size)
{
    membuf *m = ctx;
    if (m->failed || size <= 0)
        return;
    if (m->size + (size_t)size > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->size + (size_t)size)
            cap *= 2;
        uint8_t *p = realloc(m->data, cap);
        if (!p) {
            m->failed = 1;
            return;
        }
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->size, data, (size_t)size);
    m->size += (size_t)size;
}

ddpm_result image_grid_png(const float *x, int n, int c, int h, int w, uint8_t **png, size_t *size)
{
    *png = NULL;
    *size = 0;
    if (c < 1 || c > 4)
        return ddpm_fail(DDPM_ERR_ARG, "image grid: %d channels (PNG takes 1 to 4)", c);
    int cols, rows, gw, gh;
    ddpm_result r = image_grid_size(n, h, w, &cols, &rows, &gw, &gh);
    if (r != DDPM_OK)
        return r;
    uint8_t *pixels = malloc((size_t)gw * gh * c);
    if (!pixels)
        return ddpm_fail(DDPM_ERR_NOMEM, "image grid: out of memory for %d x %d pixels", gw, gh);
    image_grid_pixels(pixels, x, n, c, h, w);
    membuf m = {0};
    int ok = stbi_write_png_to_func(membuf_append, &m, gw, gh, c, pixels, gw * c);
    free(pixels);
    if (!ok || m.failed) {
        free(m.data);
        return ddpm_fail(DDPM_ERR_NOMEM, "image grid: PNG encoding of %d x %d pixels failed", gw, gh);
    }
    *png = m.data;
    *size = m.size;
    return DDPM_OK;
}

ddpm_result image_write_png_grid(const char *path, const float *x, int n, int c, int h, int w)
{
    uint8_t *png;
    size_t size;
    ddpm_result r = image_grid_png(x, n, c, h, w, &png, &size);
    if (r != DDPM_OK)
        return r;
    r = ddpm_write_file_atomic(path, png, size);
    free(png);
    return r;
}
