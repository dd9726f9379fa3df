/* npy.h: NumPy .npy files of float32 ('<f4', C order) with up to 4 dimensions: a hostile-input
 * reader (format versions 1.0, 2.0 and 3.0) and an atomic writer (version 1.0). */
#ifndef DDPM_NPY_H
#define DDPM_NPY_H

#include "common.h"

#define NPY_MAX_DIMS 4

typedef struct npy_array {
    int ndim;                    /* 0..NPY_MAX_DIMS */
    int64_t shape[NPY_MAX_DIMS]; /* unused dims are 1 */
    int64_t numel;
    float *data; /* malloc'ed, numel floats, C order */
} npy_array;

/* Parses an .npy file held in memory. Checks the magic, the version, that the header length lies
 * inside the buffer, the header dict ('descr' must be '<f4', 'fortran_order' False, 'shape' a tuple
 * of at most 4 non-negative integers; each key exactly once, nothing else), and that the data is
 * exactly numel * 4 bytes. `what` names the source in messages. On success a owns a.data. */
ddpm_result npy_parse(const uint8_t *buf, size_t size, const char *what, npy_array *a);

/* Reads and parses a file (at most 4 GiB). */
ddpm_result npy_read(const char *path, npy_array *a);

/* Frees a.data; a zeroed or freed array is fine. */
void npy_free(npy_array *a);

/* Writes data (shape[0..ndim), C order) as a version 1.0 '<f4' .npy file, atomically. */
ddpm_result npy_write(const char *path, const float *data, int ndim, const int64_t *shape);

/* The same bytes in a malloc'ed buffer (caller frees). */
ddpm_result npy_encode(const float *data, int ndim, const int64_t *shape, uint8_t **out, size_t *size);

#endif
