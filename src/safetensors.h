/* safetensors.h: a hostile-input reader and a writer for the safetensors format
 * (u64 LE header length, JSON header, raw LE tensors). Dtypes in: F32, F16, BF16; out: F32, F16. */
#ifndef DDPM_SAFETENSORS_H
#define DDPM_SAFETENSORS_H

#include "common.h"

typedef enum { ST_F32, ST_F16, ST_BF16 } st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim; /* 0..4 */
    int64_t shape[4];
    int64_t numel;
    const uint8_t *data; /* points into st_file.buf; numel * dtype size bytes */
} st_tensor;

typedef struct st_meta {
    char *key, *value;
} st_meta;

typedef struct st_file {
    uint8_t *buf; /* the whole file */
    size_t size;
    st_tensor *tensors;
    int n_tensors;
    st_meta *meta;
    int n_meta;
} st_file;

/* Parses a file already in memory (takes ownership of buf on success AND failure). Checks: header
 * length within the file and <= 100 MB, valid JSON object, every entry has a known dtype, 0..4 dims,
 * non-negative shapes whose product fits, data_offsets [begin, end) inside the data area with
 * end - begin == numel * size, no two tensors overlapping, duplicate names refused. */
ddpm_result st_parse(uint8_t *buf, size_t size, const char *what, st_file *f);
/* Reads and parses a file (max 16 GiB). */
ddpm_result st_open(const char *path, st_file *f);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta_get(const st_file *f, const char *key);
/* Converts a tensor to float32 (dst holds numel floats). */
void st_to_f32(const st_tensor *t, float *dst);

/* Writer: tensors given as float32, stored as F32 or F16 (round to nearest even). */
typedef struct st_out_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
    const float *data;
} st_out_tensor;
ddpm_result st_write(const char *path, const st_out_tensor *t, int n, const st_meta *meta, int n_meta,
                     st_dtype dtype);

/* fp16 / bf16 helpers. */
float st_half_to_float(uint16_t h);
uint16_t st_float_to_half(float f);
float st_bf16_to_float(uint16_t h);

#endif
