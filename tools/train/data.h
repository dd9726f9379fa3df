/* data.h: training images for ddpm-train and tools/eval: MNIST-style IDX files (raw or gzip, read through
 * zlib) and folders of PNG/JPEG (stb_image), resized and center-cropped to the model size, kept as 8-bit. */
#ifndef DDPM_TRAIN_DATA_H
#define DDPM_TRAIN_DATA_H

#include "common.h"

typedef struct dataset {
    int n;           /* images */
    int c, s;        /* channels, side: every image is (c, s, s) */
    uint8_t *pix;    /* n * c * s * s, planar per image (NCHW), 0..255 */
    uint8_t *labels; /* n class labels (IDX label files only), else NULL */
    uint32_t crc;    /* CRC-32 of pix: identifies the data in checkpoints */
} dataset;

/* Loads path: a directory of PNG/JPEG images (every regular file must decode; sorted by name), or an IDX
 * image file (magic 0x00000803, u8, N x H x W; raw or gzip). Images are converted to `channels` (1 grey,
 * 3 RGB), resized so the shorter side is `size` and center-cropped to size x size. Clear errors for a
 * wrong magic, a truncated file, a non-image in a folder, an empty folder. */
ddpm_result dataset_load(const char *path, int channels, int size, dataset *d);
/* Loads an IDX label file (magic 0x00000801, u8, N) whose N must equal d->n. */
ddpm_result dataset_load_labels(const char *path, dataset *d);
void dataset_free(dataset *d);

/* Image i as floats in [-1, 1]: x = p / 127.5 - 1, mirrored left-right when flip. */
void dataset_get(const dataset *d, int i, int flip, float *out);

/* Resamples an 8-bit interleaved image (h, w, c) to planar (c, size, size): scale so the shorter side is
 * size (area average when shrinking, bilinear when enlarging), then center-crop. */
void image_resize_crop(const uint8_t *src, int w, int h, int c, int size, uint8_t *dst);

#endif
