/* image.h: PNG grids of sampled images. Samples (n, C, H, W) float in [-1, 1] become 8-bit pixels
 * clamp((x + 1) / 2, 0, 1) * 255 rounded, laid out in a near-square grid with a 2-pixel border. */
#ifndef DDPM_IMAGE_H
#define DDPM_IMAGE_H

#include "common.h"

#define DDPM_GRID_BORDER 2

/* Grid geometry for n images of h x w: cols = ceil(sqrt(n)), rows = ceil(n / cols), a border of
 * DDPM_GRID_BORDER pixels around and between the tiles. DDPM_ERR_ARG on bad sizes, DDPM_ERR_NOMEM
 * when the grid would not fit a PNG (each side at most 2^24 pixels, at most 2^31 bytes). */
ddpm_result image_grid_size(int n, int h, int w, int *cols, int *rows, int *grid_w, int *grid_h);

/* Fills pixels (grid_h, grid_w, c) 8-bit, interleaved, from x (n, c, h, w) in [-1, 1]; the border and
 * unused tiles are 0 (black; transparent when c is 2 or 4). NaN maps to 0. c: 1 grey, 2 grey+alpha,
 * 3 RGB, 4 RGBA. The caller allocates pixels from image_grid_size. */
void image_grid_pixels(uint8_t *pixels, const float *x, int n, int c, int h, int w);

/* Encodes the grid as PNG into a malloc'ed buffer (*png, *size; caller frees). */
ddpm_result image_grid_png(const float *x, int n, int c, int h, int w, uint8_t **png, size_t *size);

/* Encodes the grid and writes it to path atomically (nothing is left at path on failure). */
ddpm_result image_write_png_grid(const char *path, const float *x, int n, int c, int h, int w);

#endif
