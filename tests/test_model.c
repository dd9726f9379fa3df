/* test_model.c: safetensors reader/writer (against bytes written by Python's json + numpy), fp16/bf16
 * decoding, config JSON, hostile files (each refused with the right code), byte mutations, model load/save.
 */
#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------------------------- */

static char tmp_dir[256];

/* A path in the test's temporary directory; the four most recent results stay valid. */
static const char *tmp_path(const char *name)
{
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", tmp_dir, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) {
        fprintf(stderr, "FAIL cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* A message from ddpm_last_error() is non-empty and one line. */
static int good_message(void)
{
    const char *m = ddpm_last_error();
    return m[0] != 0 && !strchr(m, '\n') && !strchr(m, '\r');
}

/* Checks that a call failed with `want` and left a one-line message; prints the message. */
#define CHECK_FAILS(expr, want, what)                                                                        \
    do {                                                                                                     \
        ddpm_result r_ = (expr);                                                                             \
        int ok_ = r_ == (want) && good_message();                                                            \
        CHECK(ok_, "%s: got %s (%s), want %s", what, ddpm_result_string(r_), ddpm_last_error(),              \
              ddpm_result_string(want));                                                                     \
        if (ok_)                                                                                             \
            printf("ok   refused %s: %s\n", what, ddpm_last_error());                                        \
    } while (0)

/* splitmix64: the test's own deterministic generator for mutations. */
static uint64_t mix_state = 0x9e3779b97f4a7c15u;
static uint64_t next_u64(void)
{
    uint64_t z = (mix_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static size_t next_below(size_t n)
{
    return n ? (size_t)(next_u64() % n) : 0;
}

static float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, 4) == 0;
}

/* ---- reference files -------------------------------------------------------------------------- */

/* Written by tests/torch_ref/stio.py (Python json + numpy, round-to-nearest-even BF16) for the (2, 4)
 * tensor "v" = [1, -2, 0.1, 65504, 2^-24, -1e-8, 3.14159, 1e30] with metadata {"k": "v"}. */
static const uint8_t ref_f32[128] = {
    0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61,
    0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a, 0x7b, 0x22, 0x6b, 0x22, 0x3a, 0x22, 0x76, 0x22,
    0x7d, 0x2c, 0x22, 0x76, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22,
    0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x2c,
    0x34, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73,
    0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x33, 0x32, 0x5d, 0x7d, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0xcd, 0xcc, 0xcc, 0x3d, 0x00, 0xe0, 0x7f, 0x47,
    0x00, 0x00, 0x80, 0x33, 0x77, 0xcc, 0x2b, 0xb2, 0xd0, 0x0f, 0x49, 0x40, 0xca, 0xf2, 0x49, 0x71};
static const uint8_t ref_f16[112] = {
    0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61,
    0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a, 0x7b, 0x22, 0x6b, 0x22, 0x3a, 0x22, 0x76, 0x22,
    0x7d, 0x2c, 0x22, 0x76, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22,
    0x46, 0x31, 0x36, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x2c,
    0x34, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73,
    0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x31, 0x36, 0x5d, 0x7d, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x00, 0x3c, 0x00, 0xc0, 0x66, 0x2e, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x80, 0x48, 0x42, 0x00, 0x7c};
static const uint8_t ref_bf16[112] = {
    0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61,
    0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a, 0x7b, 0x22, 0x6b, 0x22, 0x3a, 0x22, 0x76, 0x22,
    0x7d, 0x2c, 0x22, 0x76, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22,
    0x42, 0x46, 0x31, 0x36, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32,
    0x2c, 0x34, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74,
    0x73, 0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x31, 0x36, 0x5d, 0x7d, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x80, 0x3f, 0x00, 0xc0, 0xcd, 0x3d, 0x80, 0x47, 0x80, 0x33, 0x2c, 0xb2, 0x49, 0x40, 0x4a, 0x71};

static const float ref_values[8] = {1.0f, -2.0f, 0.1f, 65504.0f, 0x1p-24f, -1e-8f, 3.14159f, 1e30f};

/* Parses an in-memory copy (st_parse takes ownership). */
static ddpm_result parse_copy(const uint8_t *data, size_t n, st_file *f)
{
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        exit(1);
    memcpy(buf, data, n);
    return st_parse(buf, n, "test", f);
}

static void test_reference_files(void)
{
    /* numpy's float16 / round-to-nearest-even bfloat16 of ref_values */
    const float want_f16[8] = {1.0f, -2.0f, 0.0999755859375f, 65504.0f, 0x1p-24f, -0.0f, 3.140625f, INFINITY};
    const float want_bf16[8] = {1.0f,           -2.0f,
                                0.10009765625f, 65536.0f,
                                0x1p-24f,       -1.0011717677116394e-08f,
                                3.140625f,      1.0002555517425873e+30f};
    const struct {
        const uint8_t *bytes;
        size_t n;
        st_dtype dt;
        const float *want;
    } refs[3] = {{ref_f32, sizeof ref_f32, ST_F32, ref_values},
                 {ref_f16, sizeof ref_f16, ST_F16, want_f16},
                 {ref_bf16, sizeof ref_bf16, ST_BF16, want_bf16}};
    for (int r = 0; r < 3; r++) {
        st_file f;
        ddpm_result res = parse_copy(refs[r].bytes, refs[r].n, &f);
        CHECK(res == DDPM_OK, "reference file %d parses: %s", r, ddpm_last_error());
        if (res != DDPM_OK)
            continue;
        const st_tensor *t = st_find(&f, "v");
        CHECK(t && t->dtype == refs[r].dt && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 4 &&
                  t->numel == 8,
              "reference %d: tensor v dtype/shape", r);
        CHECK(f.n_tensors == 1 && f.n_meta == 1 && st_meta_get(&f, "k") &&
                  strcmp(st_meta_get(&f, "k"), "v") == 0,
              "reference %d: metadata {\"k\": \"v\"}", r);
        CHECK(st_find(&f, "w") == NULL && st_meta_get(&f, "v") == NULL, "reference %d: absent names", r);
        if (t) {
            float got[8];
            st_to_f32(t, got);
            int same = 1;
            for (int i = 0; i < 8; i++)
                same &= same_bits(got[i], refs[r].want[i]);
            CHECK(same, "reference %d: decoded values are bit-identical to numpy's", r);
        }
        st_close(&f);
    }

    /* the writer produces byte-identical files for F32 and F16 */
    st_out_tensor t = {"v", 2, {2, 4}, ref_values};
    st_meta meta = {(char *)"k", (char *)"v"};
    const struct {
        const uint8_t *bytes;
        size_t n;
        st_dtype dt;
    } outs[2] = {{ref_f32, sizeof ref_f32, ST_F32}, {ref_f16, sizeof ref_f16, ST_F16}};
    for (int r = 0; r < 2; r++) {
        const char *path = tmp_path("ref_out.safetensors");
        ddpm_result res = st_write(path, &t, 1, &meta, 1, outs[r].dt);
        uint8_t *data = NULL;
        size_t n = 0;
        if (res == DDPM_OK)
            res = ddpm_read_file(path, 1 << 20, &data, &n);
        CHECK(res == DDPM_OK && n == outs[r].n && memcmp(data, outs[r].bytes, n) == 0,
              "st_write %s output is byte-identical to the Python writer's (%zu vs %zu bytes)",
              r ? "F16" : "F32", n, outs[r].n);
        free(data);
        unlink(path);
    }
}

/* ---- fp16 / bf16 ------------------------------------------------------------------------------ */

static void test_half(void)
{
    const struct {
        uint16_t h;
        float f;
    } known[] = {
        {0x3c00, 1.0f},       {0xc000, -2.0f},    {0x7bff, 65504.0f},        {0x0001, 0x1p-24f},
        {0x03ff, 0x3ffp-24f}, {0x0400, 0x1p-14f}, {0x3555, 0.333251953125f}, {0x0000, 0.0f},
        {0x8000, -0.0f},      {0x7c00, INFINITY}, {0xfc00, -INFINITY},       {0x3bff, 0.99951171875f},
    };
    int ok = 1;
    for (size_t i = 0; i < DDPM_ARRAY_LEN(known); i++) {
        float f = st_half_to_float(known[i].h);
        uint16_t h = st_float_to_half(known[i].f);
        if (!same_bits(f, known[i].f) || h != known[i].h) {
            ok = 0;
            fprintf(stderr, "half 0x%04x: decoded %g (want %g), encoded 0x%04x\n", known[i].h, f, known[i].f,
                    h);
        }
    }
    CHECK(ok, "fp16 known bit patterns decode and encode exactly");
    CHECK(isnan(st_half_to_float(0x7e00)) && isnan(st_half_to_float(0x7c01)) &&
              isnan(st_half_to_float(0xfe00)),
          "fp16 NaNs decode to NaN");
    uint16_t hn = st_float_to_half(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "NaN encodes to an fp16 NaN (0x%04x)", hn);
    /* rounding: ties to even, overflow, underflow */
    CHECK(st_float_to_half(1.0f + 0x1p-11f) == 0x3c00, "1 + 2^-11 ties to even (down)");
    CHECK(st_float_to_half(1.0f + 3 * 0x1p-11f) == 0x3c02, "1 + 3*2^-11 ties to even (up)");
    CHECK(st_float_to_half(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01, "just above a tie rounds up");
    CHECK(st_float_to_half(65519.0f) == 0x7bff && st_float_to_half(65520.0f) == 0x7c00,
          "65519 -> 65504, 65520 -> inf");
    CHECK(st_float_to_half(-1e6f) == 0xfc00, "-1e6 -> -inf");
    CHECK(st_float_to_half(0x1p-25f) == 0x0000 && st_float_to_half(0x1.8p-25f) == 0x0001 &&
              st_float_to_half(0x1.8p-24f) == 0x0002 && st_float_to_half(-0x1p-26f) == 0x8000,
          "subnormal rounding (2^-25 -> 0, 1.5*2^-25 -> 2^-24, 1.5*2^-24 -> 2*2^-24, -2^-26 -> -0)");
    /* every finite half survives a round trip */
    int rt = 1;
    for (uint32_t h = 0; h < 0x10000; h++)
        if ((h & 0x7c00) != 0x7c00 && st_float_to_half(st_half_to_float((uint16_t)h)) != h)
            rt = 0;
    CHECK(rt, "every finite fp16 value round-trips through float");

    CHECK(same_bits(st_bf16_to_float(0x3f80), 1.0f) && same_bits(st_bf16_to_float(0xc000), -2.0f) &&
              same_bits(st_bf16_to_float(0x7f80), INFINITY) && isnan(st_bf16_to_float(0x7fc0)) &&
              same_bits(st_bf16_to_float(0x0001), bits_f32(0x00010000)) &&
              same_bits(st_bf16_to_float(0x4049), 3.140625f),
          "bf16 known bit patterns (0x3F80 = 1, 0xC000 = -2, inf, NaN, subnormal, pi)");
}

/* ---- writer / reader round trip --------------------------------------------------------------- */

static void test_round_trip(void)
{
    enum { NA = 2 * 3 * 5 * 7, NB = 11 };
    float a[NA], b[NB], scalar = -7.25f;
    for (int i = 0; i < NA; i++) /* magnitudes 1e-9 .. 1e4 (within fp16 range), both signs */
        a[i] = (float)((i % 2 ? -1.0 : 1.0) * pow(10.0, (i % 13) - 9) * (1.0 + i / 37.0));
    for (int i = 0; i < NB; i++)
        b[i] = (float)i / 3.0f;
    st_out_tensor t[4] = {{"conv.weight", 4, {2, 3, 5, 7}, a},
                          {"b\xc3\xa9ta \"quoted\"\\", 1, {NB}, b},
                          {"scalar", 0, {0}, &scalar},
                          {"empty", 2, {0, 5}, NULL}};
    st_meta meta[2] = {{(char *)"ddpm.config", (char *)"{\"a\": [1, 2],\n \"b\": \"x\"}"},
                       {(char *)"format", (char *)"pt"}};
    for (int d = 0; d < 2; d++) {
        st_dtype dt = d ? ST_F16 : ST_F32;
        const char *path = tmp_path(d ? "rt16.safetensors" : "rt32.safetensors");
        ddpm_result res = st_write(path, t, 4, meta, 2, dt);
        CHECK(res == DDPM_OK, "st_write %s: %s", d ? "F16" : "F32", ddpm_last_error());
        st_file f;
        res = st_open(path, &f);
        CHECK(res == DDPM_OK, "st_open of the written %s file: %s", d ? "F16" : "F32", ddpm_last_error());
        if (res != DDPM_OK)
            continue;
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | f.buf[i];
        CHECK(hlen % 8 == 0 && f.buf[8] == '{', "header length %llu is 8-byte aligned",
              (unsigned long long)hlen);
        CHECK(f.n_tensors == 4 && f.n_meta == 2, "4 tensors and 2 metadata entries (got %d, %d)", f.n_tensors,
              f.n_meta);
        const char *cfg = st_meta_get(&f, "ddpm.config");
        CHECK(cfg && strcmp(cfg, meta[0].value) == 0, "metadata string with quotes and newline round-trips");
        for (int k = 0; k < 4; k++) {
            const st_tensor *x = st_find(&f, t[k].name);
            int shape_ok = x && x->ndim == t[k].ndim && x->dtype == dt;
            for (int j = 0; shape_ok && j < t[k].ndim; j++)
                shape_ok = x->shape[j] == t[k].shape[j];
            CHECK(shape_ok, "tensor \"%s\" is found with its shape and dtype", t[k].name);
            if (k == 3)
                CHECK(x && x->numel == 0, "empty tensor has no elements");
            if (!shape_ok || x->numel == 0)
                continue;
            float *got = malloc((size_t)x->numel * sizeof(float));
            st_to_f32(x, got);
            char what[64];
            snprintf(what, sizeof what, "%s round trip of tensor %d", d ? "F16" : "F32", k);
            if (d == 0)
                test_close(what, got, t[k].data, x->numel, 0.0f, 0.0f);
            else /* half precision: relative 2^-11 for normals, 2^-25 absolute below 2^-14 */
                test_close(what, got, t[k].data, x->numel, 0x1p-25f, 0x1p-11f);
            free(got);
        }
        st_close(&f);
        unlink(path);
    }

    /* atomic writes leave no temporary files behind; a failed write leaves no file */
    DIR *dir = opendir(tmp_dir);
    int entries = 0;
    for (struct dirent *e; dir && (e = readdir(dir));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            entries++;
    if (dir)
        closedir(dir);
    CHECK(entries == 0, "no temporary files left in the test directory (%d entries)", entries);
    CHECK_FAILS(st_write(tmp_path("no/such/dir.safetensors"), t, 1, NULL, 0, ST_F32), DDPM_ERR_IO,
                "write into a missing directory");
    CHECK(access(tmp_path("no/such/dir.safetensors"), F_OK) != 0, "no file after a failed write");
    st_out_tensor dup[2] = {t[1], t[1]};
    CHECK_FAILS(st_write(tmp_path("dup.safetensors"), dup, 2, NULL, 0, ST_F32), DDPM_ERR_ARG,
                "writer refuses duplicate names");
    CHECK_FAILS(st_write(tmp_path("bf.safetensors"), t, 1, NULL, 0, ST_BF16), DDPM_ERR_ARG,
                "writer refuses BF16 output");
    st_out_tensor nodata = {"x", 1, {3}, NULL};
    CHECK_FAILS(st_write(tmp_path("nodata.safetensors"), &nodata, 1, NULL, 0, ST_F32), DDPM_ERR_ARG,
                "writer refuses a tensor without data");
    CHECK(access(tmp_path("dup.safetensors"), F_OK) != 0 && access(tmp_path("nodata.safetensors"), F_OK) != 0,
          "refused writes create no file");
}

/* ---- hostile files ---------------------------------------------------------------------------- */

/* A file of u64 LE length + header + data_len bytes of data; hlen_override replaces the length. */
static ddpm_result open_crafted(const char *header, size_t data_len, int use_override, uint64_t hlen_override)
{
    size_t hl = strlen(header);
    size_t n = 8 + hl + data_len;
    uint8_t *buf = calloc(1, n);
    uint64_t len = use_override ? hlen_override : hl;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hl + i] = (uint8_t)(i * 37);
    const char *path = tmp_path("crafted.safetensors");
    write_bytes(path, buf, n);
    free(buf);
    st_file f;
    ddpm_result r = st_open(path, &f);
    if (r == DDPM_OK) {
        /* a file that parses must be fully readable */
        for (int i = 0; i < f.n_tensors; i++) {
            float *tmp = malloc((size_t)(f.tensors[i].numel ? f.tensors[i].numel : 1) * sizeof(float));
            st_to_f32(&f.tensors[i], tmp);
            free(tmp);
        }
        st_close(&f);
    }
    unlink(path);
    return r;
}

#define T1(dtype, shape, offs)                                                                               \
    "{\"t\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static void test_hostile(void)
{
    const char *path = tmp_path("hostile.safetensors");
    st_file f;
    write_bytes(path, "", 0);
    CHECK_FAILS(st_open(path, &f), DDPM_ERR_FORMAT, "empty file");
    write_bytes(path, "\x10\0\0\0\0\0\0", 7);
    CHECK_FAILS(st_open(path, &f), DDPM_ERR_FORMAT, "7-byte file");
    unlink(path);
    CHECK_FAILS(st_open(path, &f), DDPM_ERR_IO, "missing file");
    CHECK_FAILS(st_open(tmp_dir, &f), DDPM_ERR_IO, "a directory");

    const char *ok = T1("F32", "[2,3]", "[0,24]");
    CHECK(open_crafted(ok, 24, 0, 0) == DDPM_OK, "crafted valid file parses: %s", ddpm_last_error());
    CHECK_FAILS(open_crafted(ok, 24, 1, strlen(ok) + 25), DDPM_ERR_FORMAT, "header length past the end");
    CHECK_FAILS(open_crafted(ok, 24, 1, (uint64_t)1 << 63), DDPM_ERR_FORMAT, "header length 2^63");
    CHECK_FAILS(open_crafted(ok, 24, 1, UINT64_MAX), DDPM_ERR_FORMAT, "header length 2^64 - 1");
    CHECK_FAILS(open_crafted(ok, 24, 1, 0), DDPM_ERR_FORMAT, "header length 0");
    CHECK_FAILS(open_crafted(ok, 24, 1, 10), DDPM_ERR_FORMAT, "header length cutting the JSON");
    CHECK_FAILS(open_crafted("hello world", 0, 0, 0), DDPM_ERR_FORMAT, "non-JSON header");
    CHECK_FAILS(open_crafted("{\"t\": nonsense}", 0, 0, 0), DDPM_ERR_FORMAT, "broken JSON header");
    CHECK_FAILS(open_crafted("[1, 2, 3]", 0, 0, 0), DDPM_ERR_FORMAT, "JSON array header");
    CHECK_FAILS(open_crafted(" {}", 0, 0, 0), DDPM_ERR_FORMAT, "header not starting with '{'");
    CHECK_FAILS(open_crafted("{}x", 0, 0, 0), DDPM_ERR_FORMAT, "bytes after the header object");
    CHECK_FAILS(open_crafted("{\"t\":{\"dtype\":\"F32\"", 0, 0, 0), DDPM_ERR_FORMAT, "truncated JSON");
    CHECK_FAILS(open_crafted(T1("Q7", "[2,3]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT, "unknown dtype");
    CHECK_FAILS(open_crafted(T1("F64", "[3]", "[0,24]"), 24, 0, 0), DDPM_ERR_UNSUPPORTED, "F64 dtype");
    CHECK_FAILS(open_crafted(T1("F32", "[1,1,1,2,3]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT, "5 dims");
    CHECK_FAILS(open_crafted(T1("F32", "[-2,-3]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT, "negative dim");
    CHECK_FAILS(open_crafted(T1("F32", "[2.0,3]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT, "fractional dim");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[0,2.4e1]"), 24, 0, 0), DDPM_ERR_FORMAT, "exponent offset");
    CHECK_FAILS(open_crafted(T1("F32", "[4294967296,4294967296]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "shape product overflow");
    CHECK_FAILS(open_crafted(T1("F32", "[99999999999999999999]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "dimension beyond int64");
    CHECK_FAILS(open_crafted(T1("F32", "[4611686018427387904]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "byte size overflow (2^62 floats)");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[0,28]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "data_offsets past the end");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[24,0]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "data_offsets reversed");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[-4,20]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "negative data_offsets");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[0,20]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "offsets length mismatch with shape*dtype");
    CHECK_FAILS(open_crafted(T1("F16", "[2,3]", "[0,24]"), 24, 0, 0), DDPM_ERR_FORMAT,
                "offsets sized for F32 on an F16 tensor");
    CHECK_FAILS(open_crafted(T1("F32", "[2,3]", "[0,24,48]"), 48, 0, 0), DDPM_ERR_FORMAT,
                "three data_offsets");
    CHECK_FAILS(open_crafted(T1("F32", "2", "[0,8]"), 8, 0, 0), DDPM_ERR_FORMAT, "shape not an array");
    CHECK_FAILS(open_crafted("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, 0, 0), DDPM_ERR_FORMAT,
                "missing data_offsets");
    CHECK_FAILS(
        open_crafted("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                     0, 0),
        DDPM_ERR_FORMAT, "duplicate key inside an entry");
    CHECK_FAILS(open_crafted("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                             24, 0, 0),
                DDPM_ERR_FORMAT, "overlapping tensors");
    CHECK_FAILS(open_crafted("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                             16, 0, 0),
                DDPM_ERR_FORMAT, "duplicate names");
    CHECK_FAILS(open_crafted("{\"__metadata__\":{\"a\":1}}", 0, 0, 0), DDPM_ERR_FORMAT,
                "metadata value a number");
    CHECK_FAILS(open_crafted("{\"__metadata__\":[\"a\"]}", 0, 0, 0), DDPM_ERR_FORMAT, "metadata an array");
    CHECK_FAILS(open_crafted("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, 0, 0), DDPM_ERR_FORMAT,
                "metadata value an object");
    CHECK_FAILS(open_crafted("{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, 0), DDPM_ERR_FORMAT,
                "metadata twice");
    CHECK_FAILS(open_crafted("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0, 0, 0), DDPM_ERR_FORMAT,
                "duplicate metadata key");
    CHECK_FAILS(open_crafted("{\"t\":5}", 0, 0, 0), DDPM_ERR_FORMAT, "tensor entry not an object");
    CHECK_FAILS(open_crafted("{\"t\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, 0),
                DDPM_ERR_FORMAT, "invalid UTF-8 in a name");
    CHECK_FAILS(
        open_crafted("{\"t\\u0000x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, 0),
        DDPM_ERR_FORMAT, "NUL escape in a name");
    CHECK_FAILS(
        open_crafted("{\"t\\ud800\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, 0),
        DDPM_ERR_FORMAT, "lone surrogate in a name");
    CHECK_FAILS(open_crafted("{\"\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, 0),
                DDPM_ERR_FORMAT, "empty name");
    {
        char big[700];
        memset(big, 'n', sizeof big);
        int l = snprintf(big, sizeof big, "{\"");
        memset(big + l, 'n', 256);
        snprintf(big + l + 256, sizeof big - (size_t)l - 256,
                 "\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}");
        CHECK_FAILS(open_crafted(big, 4, 0, 0), DDPM_ERR_FORMAT, "a 256-byte name");
    }
    {
        /* an unknown key whose value nests 1000 deep */
        char deep[2200];
        size_t l = (size_t)snprintf(deep, sizeof deep, "{\"t\":{\"x\":");
        for (int i = 0; i < 1000; i++)
            deep[l++] = '[';
        for (int i = 0; i < 1000; i++)
            deep[l++] = ']';
        snprintf(deep + l, sizeof deep - l, ",\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}");
        CHECK_FAILS(open_crafted(deep, 4, 0, 0), DDPM_ERR_FORMAT, "deeply nested value");
    }

    /* valid oddities are accepted: gaps, padding, unknown keys, escapes, empty and 0-d tensors */
    const char *fine[] = {
        "{}",
        "{}        ",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
        "{\"t\":{\"extra\":{\"k\":[1,2.5e3,true,null,\"s\"]},\"shape\":[],\"data_offsets\":[4,6],\"dtype\":"
        "\"BF16\"}}",
        "{\"t\\u00e9\\n\\\"\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
        "\"u\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
        "{ \"__metadata__\" : { \"a\" : \"\\ud83d\\ude00\" } , \"t\" : { \"dtype\" : \"F32\" , \"shape\" : [ "
        "4 ] ,"
        " \"data_offsets\" : [ 0 , 16 ] } }\n",
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(fine); i++)
        CHECK(open_crafted(fine[i], 16, 0, 0) == DDPM_OK, "valid header %zu accepted: %s", i,
              ddpm_last_error());
}

/* ---- mutations -------------------------------------------------------------------------------- */

/* Parses `n` mutated copies of a valid file; every parse must return cleanly, and a file that parses
 * must have every tensor inside the buffer. Run under -fsanitize=address,undefined to catch the rest. */
static void mutate_file(const char *label, const uint8_t *base, size_t size, int n, int *n_ok, int *n_bad)
{
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i];
    size_t head_end = (size_t)(8 + hlen < size ? 8 + hlen : size);
    static const char special[] = "{}[]\",:0123456789-.eE \\u\xff\x80";
    int clean = 1;
    for (int it = 0; it < n; it++) {
        size_t len = size;
        uint8_t *buf = malloc(size);
        memcpy(buf, base, size);
        int kind = (int)next_below(5);
        if (kind == 0) /* truncate */
            len = next_below(size);
        else if (kind == 1) { /* new header length, near the real one or anywhere */
            uint64_t v = next_below(2) ? hlen + next_below(64) - 32 : next_u64() >> next_below(64);
            for (int i = 0; i < 8; i++)
                buf[i] = (uint8_t)(v >> (8 * i));
        } else {
            int flips = 1 + (int)next_below(4);
            for (int k = 0; k < flips; k++) {
                size_t at = next_below(4) ? next_below(head_end) : next_below(size);
                if (kind == 2)
                    buf[at] ^= (uint8_t)(1u << next_below(8));
                else if (kind == 3)
                    buf[at] = (uint8_t)special[next_below(sizeof special - 1)];
                else
                    buf[at] = (uint8_t)next_u64();
            }
        }
        st_file f;
        ddpm_result r = st_parse(buf, len, "mutant", &f);
        if (r == DDPM_OK) {
            (*n_ok)++;
            for (int i = 0; i < f.n_tensors; i++) {
                const st_tensor *t = &f.tensors[i];
                size_t esz = t->dtype == ST_F32 ? 4 : 2;
                if (t->numel > 0 && (t->data < f.buf || t->data + (size_t)t->numel * esz > f.buf + f.size))
                    clean = 0;
                else if (t->numel > 0 && t->numel < (1 << 20)) {
                    float *tmp = malloc((size_t)t->numel * sizeof(float));
                    st_to_f32(t, tmp);
                    free(tmp);
                }
            }
            st_close(&f);
        } else {
            (*n_bad)++;
            if (!good_message() || f.buf != NULL || f.n_tensors != 0)
                clean = 0;
        }
    }
    CHECK(clean, "%s: %d mutants parsed cleanly (%d accepted, %d refused)", label, n, *n_ok, *n_bad);
    printf("%s %s: %d mutants: %d accepted, %d refused with a message\n", clean ? "ok  " : "FAIL", label, n,
           *n_ok, *n_bad);
}

static void test_mutations(void)
{
    float a[24];
    for (int i = 0; i < 24; i++)
        a[i] = (float)i - 11.5f;
    st_out_tensor t[3] = {
        {"down.0.weight", 4, {2, 3, 2, 2}, a}, {"down.0.bias", 1, {2}, a}, {"s", 0, {0}, a}};
    st_meta meta[2] = {{(char *)"ddpm.config", (char *)"{\"in_channels\": 3}"},
                       {(char *)"format", (char *)"pt"}};
    const char *path = tmp_path("mut.safetensors");
    uint8_t *data = NULL;
    size_t n = 0;
    if (st_write(path, t, 3, meta, 2, ST_F16) != DDPM_OK ||
        ddpm_read_file(path, 1 << 20, &data, &n) != DDPM_OK) {
        CHECK(0, "writing the mutation base file: %s", ddpm_last_error());
        return;
    }
    unlink(path);
    int ok = 0, bad = 0;
    mutate_file("written F16 file", data, n, 3000, &ok, &bad);
    CHECK(ok > 0 && bad > 0, "mutations both kept and broke files (%d kept, %d broken)", ok, bad);
    free(data);
    ok = bad = 0;
    mutate_file("reference BF16 file", ref_bf16, sizeof ref_bf16, 1000, &ok, &bad);
}

/* ---- config JSON ------------------------------------------------------------------------------ */

/* google/ddpm-cifar10-32 unet/config.json as published with diffusers. */
static const char cifar10_config[] =
    "{\"_class_name\": \"UNet2DModel\", \"_diffusers_version\": \"0.0.4\", \"act_fn\": \"silu\", "
    "\"attention_head_dim\": null, \"block_out_channels\": [128, 256, 256, 256], \"center_input_sample\": "
    "false, "
    "\"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"], "
    "\"downsample_padding\": 0, \"flip_sin_to_cos\": false, \"freq_shift\": 1, \"in_channels\": 3, "
    "\"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-06, \"norm_num_groups\": 32, "
    "\"out_channels\": 3, \"sample_size\": 32, \"time_embedding_type\": \"positional\", "
    "\"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\", \"AttnUpBlock2D\", \"UpBlock2D\"]}";
static const char cifar10_scheduler[] =
    "{\"_class_name\": \"DDPMScheduler\", \"_diffusers_version\": \"0.1.1\", \"beta_end\": 0.02, "
    "\"beta_schedule\": \"linear\", \"beta_start\": 0.0001, \"clip_sample\": true, \"num_train_timesteps\": "
    "1000, "
    "\"trained_betas\": null, \"variance_type\": \"fixed_small\"}";

static int unet_equal(const ddpm_unet_config *a, const ddpm_unet_config *b)
{
    int eq = a->in_channels == b->in_channels && a->out_channels == b->out_channels &&
             a->sample_size == b->sample_size && a->levels == b->levels &&
             a->layers_per_block == b->layers_per_block && a->mid_attn == b->mid_attn &&
             a->norm_num_groups == b->norm_num_groups && a->norm_eps == b->norm_eps &&
             a->attention_head_dim == b->attention_head_dim &&
             a->downsample_padding == b->downsample_padding && a->freq_shift == b->freq_shift &&
             a->flip_sin_to_cos == b->flip_sin_to_cos &&
             a->mid_block_scale_factor == b->mid_block_scale_factor;
    for (int i = 0; eq && i < a->levels; i++)
        eq = a->block_out_channels[i] == b->block_out_channels[i] && a->down_attn[i] == b->down_attn[i] &&
             a->up_attn[i] == b->up_attn[i];
    return eq;
}

static int sched_equal(const ddpm_schedule_config *a, const ddpm_schedule_config *b)
{
    return a->beta_schedule == b->beta_schedule && a->beta_start == b->beta_start &&
           a->beta_end == b->beta_end && a->num_train_timesteps == b->num_train_timesteps &&
           a->variance_type == b->variance_type && a->clip_sample == b->clip_sample &&
           a->clip_sample_range == b->clip_sample_range && a->prediction_type == b->prediction_type &&
           a->steps_offset == b->steps_offset && a->set_alpha_to_one == b->set_alpha_to_one;
}

/* A UNet config with one key replaced (or added): `key` and its JSON `value`. */
static ddpm_result unet_with(const char *key, const char *value, ddpm_unet_config *c)
{
    char buf[2048];
    snprintf(buf, sizeof buf, "{\"%s\": %s, %s", key, value, cifar10_config + 1);
    return unet_config_from_json(buf, strlen(buf), c);
}

static ddpm_result sched_with(const char *key, const char *value, ddpm_schedule_config *s)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"%s\": %s, %s", key, value, cifar10_scheduler + 1);
    return schedule_config_from_json(buf, strlen(buf), s);
}

static void test_config(void)
{
    ddpm_unet_config c, d, def;
    ddpm_schedule_config s, s2, sdef;
    unet_config_default(&def);
    schedule_config_default(&sdef);
    CHECK(unet_config_validate(&def) == DDPM_OK && schedule_config_validate(&sdef) == DDPM_OK,
          "defaults validate");

    ddpm_result r = unet_config_from_json(cifar10_config, strlen(cifar10_config), &c);
    CHECK(r == DDPM_OK && unet_equal(&c, &def), "ddpm-cifar10-32 config.json equals the defaults: %s",
          ddpm_last_error());
    CHECK(c.levels == 4 && c.block_out_channels[1] == 256 && c.down_attn[1] && !c.down_attn[0] &&
              c.up_attn[2] && !c.up_attn[1] && c.norm_eps == 1e-6f && c.freq_shift == 1.0f &&
              !c.flip_sin_to_cos && c.attention_head_dim == 0 && c.downsample_padding == 0,
          "cifar10 fields read as expected");
    r = schedule_config_from_json(cifar10_scheduler, strlen(cifar10_scheduler), &s);
    CHECK(r == DDPM_OK && sched_equal(&s, &sdef),
          "ddpm-cifar10-32 scheduler_config.json equals the defaults");

    /* round trips of non-default values */
    c.sample_size = 64;
    c.levels = 3;
    c.block_out_channels[2] = 512;
    c.down_attn[2] = 1;
    c.up_attn[0] = 1;
    c.up_attn[2] = 0;
    c.mid_attn = 0;
    c.attention_head_dim = 64;
    c.norm_eps = 1e-5f;
    c.freq_shift = 0.0f;
    c.flip_sin_to_cos = 1;
    c.downsample_padding = 1;
    c.mid_block_scale_factor = 1.4142135f;
    c.in_channels = 1;
    c.out_channels = 2;
    c.layers_per_block = 3;
    for (int i = 3; i < DDPM_MAX_LEVELS; i++)
        c.block_out_channels[i] = c.down_attn[i] = c.up_attn[i] = 0;
    CHECK(unet_config_validate(&c) == DDPM_OK, "modified config validates: %s", ddpm_last_error());
    char *j = unet_config_to_json(&c);
    r = j ? unet_config_from_json(j, strlen(j), &d) : DDPM_ERR_NOMEM;
    CHECK(r == DDPM_OK && unet_equal(&c, &d), "UNet config JSON round trip: %s", j ? j : "(null)");
    CHECK(j && strstr(j, "\"norm_eps\":1e-05") && strstr(j, "\"_class_name\":\"UNet2DModel\"") &&
              strstr(j, "\"attention_head_dim\":64") && strstr(j, "\"act_fn\":\"silu\""),
          "UNet JSON uses diffusers keys and short numbers");
    free(j);
    s.beta_schedule = BETA_SQUAREDCOS_CAP_V2;
    s.beta_start = 0.00085;
    s.beta_end = 0.012;
    s.num_train_timesteps = 4000;
    s.variance_type = VAR_FIXED_LARGE;
    s.clip_sample = 0;
    s.clip_sample_range = 2.5;
    s.prediction_type = PRED_V;
    s.steps_offset = 1;
    s.set_alpha_to_one = 0;
    j = schedule_config_to_json(&s);
    r = j ? schedule_config_from_json(j, strlen(j), &s2) : DDPM_ERR_NOMEM;
    CHECK(r == DDPM_OK && sched_equal(&s, &s2), "scheduler JSON round trip: %s", j ? j : "(null)");
    free(j);
    const char *kinds[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "quad", "sigmoid"};
    for (int k = 0; k < 5; k++) {
        char v[64];
        snprintf(v, sizeof v, "\"%s\"", kinds[k]);
        CHECK(sched_with("beta_schedule", v, &s) == DDPM_OK && (int)s.beta_schedule == k, "beta_schedule %s",
              kinds[k]);
    }
    CHECK(sched_with("prediction_type", "\"sample\"", &s) == DDPM_OK && s.prediction_type == PRED_SAMPLE,
          "prediction_type sample");
    CHECK(sched_with("thresholding", "false", &s) == DDPM_OK &&
              sched_with("unknown_key", "[1]", &s) == DDPM_OK,
          "unknown and harmless scheduler keys are ignored");

    /* accepted diffusers spellings */
    CHECK(unet_with("sample_size", "[32, 32]", &c) == DDPM_OK && c.sample_size == 32, "sample_size [32, 32]");
    CHECK(unet_with("attn_norm_num_groups", "32", &c) == DDPM_OK,
          "attn_norm_num_groups equal to norm_num_groups");
    CHECK(unet_with("time_embedding_dim", "512", &c) == DDPM_OK,
          "time_embedding_dim = 4 * block_out_channels[0]");
    CHECK(unet_with("dropout", "0.1", &c) == DDPM_OK &&
              unet_with("num_train_timesteps", "null", &c) == DDPM_OK,
          "training-only keys are ignored");

    /* refused: values DDPM models do not use */
    const struct {
        const char *key, *value;
        ddpm_result want;
    } bad_unet[] = {
        {"act_fn", "\"gelu\"", DDPM_ERR_UNSUPPORTED},
        {"time_embedding_type", "\"fourier\"", DDPM_ERR_UNSUPPORTED},
        {"center_input_sample", "true", DDPM_ERR_UNSUPPORTED},
        {"resnet_time_scale_shift", "\"scale_shift\"", DDPM_ERR_UNSUPPORTED},
        {"class_embed_type", "\"timestep\"", DDPM_ERR_UNSUPPORTED},
        {"num_class_embeds", "10", DDPM_ERR_UNSUPPORTED},
        {"downsample_type", "\"resnet\"", DDPM_ERR_UNSUPPORTED},
        {"upsample_type", "\"resnet\"", DDPM_ERR_UNSUPPORTED},
        {"attn_norm_num_groups", "16", DDPM_ERR_UNSUPPORTED},
        {"time_embedding_dim", "256", DDPM_ERR_UNSUPPORTED},
        {"mid_block_type", "null", DDPM_ERR_UNSUPPORTED},
        {"mid_block_type", "7", DDPM_ERR_FORMAT},
        {"_class_name", "\"UNet2DConditionModel\"", DDPM_ERR_UNSUPPORTED},
        {"sample_size", "[32, 64]", DDPM_ERR_UNSUPPORTED},
        {"sample_size", "null", DDPM_ERR_UNSUPPORTED},
        {"down_block_types", "[\"CrossAttnDownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"]",
         DDPM_ERR_UNSUPPORTED},
        {"up_block_types", "[\"UpBlock2D\", \"UpBlock2D\", \"AttnUpBlock2D\"]", DDPM_ERR_MODEL},
        {"block_out_channels", "[64, 64]", DDPM_ERR_MODEL},
        {"in_channels", "3.5", DDPM_ERR_FORMAT},
        {"in_channels", "\"3\"", DDPM_ERR_FORMAT},
        {"flip_sin_to_cos", "1", DDPM_ERR_FORMAT},
        {"norm_eps", "\"small\"", DDPM_ERR_FORMAT},
        {"block_out_channels", "128", DDPM_ERR_FORMAT},
        {"attention_head_dim", "0", DDPM_ERR_MODEL},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(bad_unet); i++) {
        char what[160];
        snprintf(what, sizeof what, "config %s = %s", bad_unet[i].key, bad_unet[i].value);
        CHECK_FAILS(unet_with(bad_unet[i].key, bad_unet[i].value, &c), bad_unet[i].want, what);
    }
    const char *broken[] = {"", "{", "[1, 2]", "null", "{\"in_channels\": }"};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(broken); i++) {
        CHECK_FAILS(unet_config_from_json(broken[i], strlen(broken[i]), &c), DDPM_ERR_FORMAT, broken[i]);
        CHECK_FAILS(schedule_config_from_json(broken[i], strlen(broken[i]), &s), DDPM_ERR_FORMAT, broken[i]);
    }
    const struct {
        const char *key, *value;
        ddpm_result want;
    } bad_sched[] = {
        {"trained_betas", "[0.1, 0.2]", DDPM_ERR_UNSUPPORTED},
        {"beta_schedule", "\"exponential\"", DDPM_ERR_UNSUPPORTED},
        {"variance_type", "\"learned_range\"", DDPM_ERR_UNSUPPORTED},
        {"prediction_type", "\"flow\"", DDPM_ERR_UNSUPPORTED},
        {"thresholding", "true", DDPM_ERR_UNSUPPORTED},
        {"clip_sample", "1", DDPM_ERR_FORMAT},
        {"num_train_timesteps", "1e3.5", DDPM_ERR_FORMAT},
        {"beta_start", "\"0.1\"", DDPM_ERR_FORMAT},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(bad_sched); i++) {
        char what[160];
        snprintf(what, sizeof what, "scheduler %s = %s", bad_sched[i].key, bad_sched[i].value);
        CHECK_FAILS(sched_with(bad_sched[i].key, bad_sched[i].value, &s), bad_sched[i].want, what);
    }

    /* validation */
    struct {
        const char *what;
        ddpm_unet_config c;
    } inval[12];
    for (int i = 0; i < 12; i++)
        inval[i].c = def;
    int n = 0;
    inval[n].what = "in_channels 5", inval[n++].c.in_channels = 5;
    inval[n].what = "out_channels 0", inval[n++].c.out_channels = 0;
    inval[n].what = "groups not dividing channels", inval[n++].c.norm_num_groups = 24;
    inval[n].what = "sample_size not divisible by 8", inval[n++].c.sample_size = 36;
    inval[n].what = "sample_size 8192", inval[n++].c.sample_size = 8192;
    inval[n].what = "layers_per_block 0", inval[n++].c.layers_per_block = 0;
    inval[n].what = "norm_eps 0", inval[n++].c.norm_eps = 0.0f;
    inval[n].what = "head dim not dividing", inval[n++].c.attention_head_dim = 96;
    inval[n].what = "block_out_channels 8192", inval[n++].c.block_out_channels[2] = 8192;
    inval[n].what = "9 levels", inval[n++].c.levels = 9;
    inval[n].what = "downsample_padding 2", inval[n++].c.downsample_padding = 2;
    inval[n].what = "freq_shift = half the width", inval[n++].c.freq_shift = 64.0f;
    for (int i = 0; i < n; i++)
        CHECK_FAILS(unet_config_validate(&inval[i].c), DDPM_ERR_MODEL, inval[i].what);
    c = def;
    c.attention_head_dim = 128; /* divides 256 (the attention levels), not 128 (level 0, no attention) */
    CHECK(unet_config_validate(&c) == DDPM_OK, "head dim checked only where attention is: %s",
          ddpm_last_error());

    struct {
        const char *what;
        ddpm_schedule_config s;
    } sinval[7];
    for (int i = 0; i < 7; i++)
        sinval[i].s = sdef;
    n = 0;
    sinval[n].what = "T 0", sinval[n++].s.num_train_timesteps = 0;
    sinval[n].what = "T 200000", sinval[n++].s.num_train_timesteps = 200000;
    sinval[n].what = "beta_end 1", sinval[n++].s.beta_end = 1.0;
    sinval[n].what = "beta_start 0", sinval[n++].s.beta_start = 0.0;
    sinval[n].what = "beta_start NaN", sinval[n++].s.beta_start = NAN;
    sinval[n].what = "clip_sample_range 0", sinval[n++].s.clip_sample_range = 0.0;
    sinval[n].what = "steps_offset T", sinval[n++].s.steps_offset = 1000;
    for (int i = 0; i < n; i++)
        CHECK_FAILS(schedule_config_validate(&sinval[i].s), DDPM_ERR_MODEL, sinval[i].what);
}

/* ---- models ----------------------------------------------------------------------------------- */

static void tiny_config(ddpm_unet_config *c)
{
    unet_config_default(c);
    memset(c->block_out_channels, 0, sizeof c->block_out_channels);
    memset(c->down_attn, 0, sizeof c->down_attn);
    memset(c->up_attn, 0, sizeof c->up_attn);
    c->sample_size = 8;
    c->levels = 2;
    c->block_out_channels[0] = 16;
    c->block_out_channels[1] = 32;
    c->down_attn[1] = 1;
    c->up_attn[0] = 1;
    c->layers_per_block = 1;
    c->norm_num_groups = 8;
}

/* The model's tensors as writer input, with names the caller may edit. */
typedef struct tensor_list {
    st_out_tensor *t;
    char (*names)[128];
    int n;
} tensor_list;

static tensor_list model_tensors(const ddpm_model *m)
{
    tensor_list l;
    l.n = m->graph.n_params;
    l.t = calloc((size_t)l.n + 1, sizeof *l.t);
    l.names = calloc((size_t)l.n + 1, sizeof *l.names);
    for (int i = 0; i < l.n; i++) {
        const ddpm_param *p = &m->graph.params[i];
        snprintf(l.names[i], sizeof l.names[i], "%s", p->name);
        l.t[i].name = l.names[i];
        l.t[i].ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++)
            l.t[i].shape[d] = p->shape[d];
        l.t[i].data = m->weights[i];
    }
    return l;
}

static int find_in(const tensor_list *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0)
            return i;
    return -1;
}

/* Writes the list with the model's config and schedule metadata (cfg overrides the config JSON;
 * with_cfg 0 leaves it out), then loads it. */
static ddpm_result write_and_load(const ddpm_model *m, const tensor_list *l, int with_cfg, const char *cfg,
                                  ddpm_model **out)
{
    char *cj = unet_config_to_json(&m->config), *sj = schedule_config_to_json(&m->schedule);
    st_meta meta[2] = {{(char *)DDPM_META_SCHEDULER, sj}, {(char *)DDPM_META_CONFIG, cfg ? (char *)cfg : cj}};
    const char *path = tmp_path("variant.safetensors");
    ddpm_result r = st_write(path, l->t, l->n, meta, with_cfg ? 2 : 1, ST_F32);
    free(cj);
    free(sj);
    *out = NULL;
    if (r != DDPM_OK) {
        CHECK(0, "writing a model variant: %s", ddpm_last_error());
        return r;
    }
    r = ddpm_model_load(path, out);
    unlink(path);
    return r;
}

static int weights_equal(const ddpm_model *a, const ddpm_model *b)
{
    if (a->graph.n_params != b->graph.n_params)
        return 0;
    for (int i = 0; i < a->graph.n_params; i++)
        if (memcmp(a->weights[i], b->weights[i], (size_t)a->graph.params[i].numel * sizeof(float)) != 0)
            return 0;
    return 1;
}

static void test_models(void)
{
    ddpm_unet_config c;
    ddpm_schedule_config s;
    tiny_config(&c);
    schedule_config_default(&s);
    s.beta_schedule = BETA_SQUAREDCOS_CAP_V2;
    s.prediction_type = PRED_V;
    ddpm_model *m = NULL, *m2 = NULL, *l = NULL;
    ddpm_result r = model_create_random(&c, &s, 1234, 0.05f, &m);
    CHECK(r == DDPM_OK, "model_create_random: %s", ddpm_last_error());
    if (r != DDPM_OK)
        return;
    r = model_create_random(&c, &s, 1234, 0.05f, &m2);
    CHECK(r == DDPM_OK && weights_equal(m, m2), "the same seed gives the same weights");
    ddpm_model_free(m2);
    m2 = NULL;
    r = model_create_random(&c, &s, 1235, 0.05f, &m2);
    CHECK(r == DDPM_OK && !weights_equal(m, m2), "another seed gives other weights");
    ddpm_model_free(m2);
    m2 = NULL;

    /* statistics of the draws, and GroupNorm gamma = 1, beta = 0 */
    double sum = 0, sq = 0;
    int64_t cnt = 0;
    int gn_ok = 1, n_gn = 0;
    for (int i = 0; i < m->graph.n_nodes; i++) {
        const ddpm_node *nd = &m->graph.nodes[i];
        if (nd->op != OP_GROUPNORM)
            continue;
        n_gn++;
        for (int64_t e = 0; e < m->graph.params[nd->w[0]].numel; e++)
            gn_ok &= m->weights[nd->w[0]][e] == 1.0f && m->weights[nd->w[1]][e] == 0.0f;
    }
    CHECK(n_gn > 0 && gn_ok, "%d GroupNorms start at gamma 1, beta 0", n_gn);
    int conv_in = graph_find_param(&m->graph, "conv_in.weight");
    CHECK(conv_in >= 0, "graph has conv_in.weight");
    for (int i = 0; i < m->graph.n_params; i++)
        if (m->graph.params[i].ndim == 4) /* conv kernels */
            for (int64_t e = 0; e < m->graph.params[i].numel; e++, cnt++) {
                sum += m->weights[i][e];
                sq += (double)m->weights[i][e] * m->weights[i][e];
            }
    double mean = sum / (double)cnt, sd = sqrt(sq / (double)cnt - mean * mean);
    CHECK(cnt > 10000 && fabs(mean) < 0.002 && fabs(sd - 0.05) < 0.002,
          "conv weights ~ N(0, 0.05): mean %.5f std %.5f", mean, sd);

    int ch = 0, hh = 0, ww = 0;
    ddpm_model_image_shape(m, &ch, &hh, &ww);
    CHECK(ch == 3 && hh == 8 && ww == 8, "image shape %d x %d x %d", ch, hh, ww);

    /* save / load, F32 exact and F16 within rounding */
    const char *p32 = tmp_path("model32.safetensors"), *p16 = tmp_path("model16.safetensors");
    CHECK(model_save(m, p32, ST_F32) == DDPM_OK && model_save(m, p16, ST_F16) == DDPM_OK, "model_save: %s",
          ddpm_last_error());
    r = ddpm_model_load(p32, &l);
    CHECK(r == DDPM_OK, "load F32 model: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        CHECK(unet_equal(&l->config, &m->config) && sched_equal(&l->schedule, &m->schedule),
              "config and schedule survive save/load");
        CHECK(weights_equal(l, m), "F32 weights are bit-identical after save/load (%d params, %lld weights)",
              l->graph.n_params, (long long)l->graph.n_weights);
        st_file f;
        if (st_open(p32, &f) == DDPM_OK) {
            CHECK(st_meta_get(&f, "format") && strcmp(st_meta_get(&f, "format"), "pt") == 0,
                  "saved file has format = pt");
            CHECK(f.n_tensors == m->graph.n_params, "one tensor per param");
            st_close(&f);
        }
        ddpm_model_free(l);
        l = NULL;
    }
    r = ddpm_model_load(p16, &l);
    CHECK(r == DDPM_OK, "load F16 model: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        int all = 1;
        for (int i = 0; i < m->graph.n_params; i++) {
            for (int64_t e = 0; e < m->graph.params[i].numel; e++) {
                float want = m->weights[i][e], got = l->weights[i][e];
                if (!(fabsf(got - want) <= 0x1p-25f + 0x1p-11f * fabsf(want)))
                    all = 0;
            }
        }
        CHECK(all, "F16 weights within half-precision rounding after save/load");
        ddpm_model_free(l);
        l = NULL;
    }
    unlink(p32);
    unlink(p16);

    /* model-level refusals */
    tensor_list tl = model_tensors(m);
    int q = find_in(&tl, "down_blocks.1.attentions.0.to_q.weight");
    int sc = find_in(&tl, "down_blocks.1.resnets.0.conv_shortcut.weight");
    CHECK(q >= 0 && tl.t[q].ndim == 2 && sc >= 0 && tl.t[sc].ndim == 4,
          "graph names to_q (2-D) and conv_shortcut (4-D) as diffusers does");
    if (q < 0 || sc < 0) {
        ddpm_model_free(m);
        return;
    }
    r = write_and_load(m, &tl, 1, NULL, &l);
    CHECK(r == DDPM_OK && weights_equal(l, m), "unchanged tensor list loads: %s", ddpm_last_error());
    ddpm_model_free(l);

    /* 1x1 kernels stored the other way round load the same */
    tl.t[q].ndim = 4;
    tl.t[q].shape[2] = tl.t[q].shape[3] = 1;
    tl.t[sc].ndim = 2;
    r = write_and_load(m, &tl, 1, NULL, &l);
    CHECK(r == DDPM_OK && weights_equal(l, m), "(C,C,1,1) to_q and (Co,Ci) conv_shortcut load: %s",
          ddpm_last_error());
    ddpm_model_free(l);
    tl.t[q].ndim = 2;
    tl.t[sc].ndim = 4;

    /* old diffusers attention names */
    tensor_list old = model_tensors(m);
    int renamed = 0;
    for (int i = 0; i < old.n; i++) {
        static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
        static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
        for (int a = 0; a < 4; a++) {
            char *hit = strstr(old.names[i], from[a]);
            if (!hit)
                continue;
            char tail[128];
            snprintf(tail, sizeof tail, "%s", hit + strlen(from[a]));
            snprintf(hit, sizeof old.names[i] - (size_t)(hit - old.names[i]), "%s%s", to[a], tail);
            renamed++;
        }
    }
    r = write_and_load(m, &old, 1, NULL, &l);
    CHECK(renamed >= 16 && r == DDPM_OK && weights_equal(l, m),
          "old attention names (query/key/value/proj_attn, %d renamed) load: %s", renamed, ddpm_last_error());
    ddpm_model_free(l);
    free(old.t);
    free(old.names);

    /* missing tensor: drop conv_in.bias (swap with the last) */
    int cb = find_in(&tl, "conv_in.bias");
    st_out_tensor keep = tl.t[cb];
    tl.t[cb] = tl.t[tl.n - 1];
    tl.n--;
    CHECK_FAILS(write_and_load(m, &tl, 1, NULL, &l), DDPM_ERR_MODEL, "missing tensor");
    CHECK(strstr(ddpm_last_error(), "conv_in.bias") && strstr(ddpm_last_error(), "missing"),
          "the message names the missing tensor: %s", ddpm_last_error());
    tl.n++;
    tl.t[tl.n - 1] = tl.t[cb];
    tl.t[cb] = keep;

    /* unknown extra tensor */
    float extra[2] = {1, 2};
    tl.t[tl.n] = (st_out_tensor){"mid_block.extra.weight", 1, {2}, extra};
    tl.n++;
    CHECK_FAILS(write_and_load(m, &tl, 1, NULL, &l), DDPM_ERR_MODEL, "unknown extra tensor");
    CHECK(strstr(ddpm_last_error(), "mid_block.extra.weight") && strstr(ddpm_last_error(), "unknown"),
          "the message names the unknown tensor: %s", ddpm_last_error());
    tl.n--;

    /* wrong shape: conv_in.weight (16, 3, 3, 3) written as (16, 3, 9) */
    int ci = find_in(&tl, "conv_in.weight");
    tl.t[ci].ndim = 3;
    tl.t[ci].shape[2] = 9;
    CHECK_FAILS(write_and_load(m, &tl, 1, NULL, &l), DDPM_ERR_MODEL, "wrong shape");
    CHECK(strstr(ddpm_last_error(), "conv_in.weight") != NULL, "the message names the misshapen tensor: %s",
          ddpm_last_error());
    tl.t[ci].ndim = 4;
    tl.t[ci].shape[2] = 3;
    /* a (C, C) weight must not match (C, C, 3, 3) */
    tl.t[q].ndim = 4;
    tl.t[q].shape[2] = tl.t[q].shape[3] = 1;
    tl.t[q].shape[0] = 8; /* numel must still match the data we pass: 8 * 32 <= 32 * 32 */
    CHECK_FAILS(write_and_load(m, &tl, 1, NULL, &l), DDPM_ERR_MODEL, "wrong shape of a 1x1 weight");
    tl.t[q].ndim = 2;
    tl.t[q].shape[0] = 32;

    /* config problems */
    CHECK_FAILS(write_and_load(m, &tl, 0, NULL, &l), DDPM_ERR_FORMAT, "no config metadata");
    CHECK(strstr(ddpm_last_error(), DDPM_META_CONFIG) != NULL, "the message names the missing key: %s",
          ddpm_last_error());
    ddpm_unet_config bad = m->config;
    bad.norm_num_groups = 5;
    char *bj = unet_config_to_json(&bad);
    CHECK_FAILS(write_and_load(m, &tl, 1, bj, &l), DDPM_ERR_MODEL, "config that fails validation");
    free(bj);
    CHECK_FAILS(write_and_load(m, &tl, 1, "{\"act_fn\": \"mish\"}", &l), DDPM_ERR_UNSUPPORTED,
                "config with an unsupported activation");
    CHECK_FAILS(write_and_load(m, &tl, 1, "not json", &l), DDPM_ERR_FORMAT, "config that is not JSON");
    ddpm_unet_config other = m->config;
    other.block_out_channels[1] = 64;
    bj = unet_config_to_json(&other);
    CHECK_FAILS(write_and_load(m, &tl, 1, bj, &l), DDPM_ERR_MODEL, "weights of another config");
    free(bj);

    /* no scheduler metadata: the defaults */
    {
        char *cj = unet_config_to_json(&m->config);
        st_meta meta = {(char *)DDPM_META_CONFIG, cj};
        const char *path = tmp_path("nosched.safetensors");
        r = st_write(path, tl.t, tl.n, &meta, 1, ST_F32);
        r = r == DDPM_OK ? ddpm_model_load(path, &l) : r;
        ddpm_schedule_config sd;
        schedule_config_default(&sd);
        CHECK(r == DDPM_OK && sched_equal(&l->schedule, &sd),
              "no scheduler metadata gives the default schedule: %s", ddpm_last_error());
        ddpm_model_free(l);
        free(cj);
        unlink(path);
    }
    free(tl.t);
    free(tl.names);

    CHECK_FAILS(ddpm_model_load(tmp_path("absent.safetensors"), &l), DDPM_ERR_IO, "missing model file");
    CHECK(l == NULL, "output NULL after a failed load");
    CHECK_FAILS(ddpm_model_load(NULL, &l), DDPM_ERR_ARG, "NULL path");
    ddpm_model_free(NULL);

    /* mutated model files: every load returns cleanly */
    {
        ddpm_unet_config tc = c;
        tc.block_out_channels[0] = 8;
        tc.block_out_channels[1] = 8;
        tc.norm_num_groups = 4;
        tc.sample_size = 4;
        ddpm_model *small = NULL;
        const char *path = tmp_path("small.safetensors");
        uint8_t *data = NULL;
        size_t n = 0;
        r = model_create_random(&tc, &s, 9, 0.1f, &small);
        if (r == DDPM_OK)
            r = model_save(small, path, ST_F16);
        if (r == DDPM_OK)
            r = ddpm_read_file(path, 1 << 24, &data, &n);
        CHECK(r == DDPM_OK, "small model for mutations: %s", ddpm_last_error());
        unlink(path);
        int clean = 1, loaded = 0, refused = 0;
        uint64_t hlen = 0;
        for (int i = 7; data && i >= 0; i--)
            hlen = hlen << 8 | data[i];
        for (int it = 0; data && it < 600; it++) {
            uint8_t *buf = malloc(n);
            memcpy(buf, data, n);
            int flips = 1 + (int)next_below(3);
            for (int k = 0; k < flips; k++) {
                size_t at = 8 + next_below((size_t)hlen);
                buf[at] =
                    next_below(2) ? (uint8_t) "0123456789,:{}[]\"-"[next_below(18)] : (uint8_t)next_u64();
            }
            st_file f;
            ddpm_model *mm = NULL;
            r = st_parse(buf, n, "mutant", &f);
            if (r == DDPM_OK) {
                r = model_from_st(&f, "mutant", &mm);
                st_close(&f);
            }
            if (r == DDPM_OK) {
                loaded++;
                ddpm_model_free(mm);
            } else {
                refused++;
                if (!good_message() || mm != NULL)
                    clean = 0;
            }
        }
        CHECK(clean && refused > 0, "600 mutated model files: %d loaded, %d refused cleanly", loaded,
              refused);
        free(data);
        ddpm_model_free(small);
    }
    ddpm_model_free(m);
}

/* The U-Net fixtures written by tests/torch_ref/unet.py from torch state_dicts load, every file
 * tensor is bound, and the weights are the file's values. */
static void test_torch_fixtures(void)
{
    const char *names[] = {"unet_a.safetensors", "unet_b.safetensors", "unet_c.safetensors",
                           "unet_d.safetensors"};
    for (size_t k = 0; k < DDPM_ARRAY_LEN(names); k++) {
        ddpm_model *m = NULL;
        st_file f;
        test_open_fixture(names[k], &f);
        ddpm_result r = ddpm_model_load(test_fixture_path(names[k]), &m);
        CHECK(r == DDPM_OK, "%s loads: %s", names[k], ddpm_last_error());
        if (r == DDPM_OK) {
            int64_t file_numel = 0;
            for (int i = 0; i < f.n_tensors; i++)
                file_numel += f.tensors[i].numel;
            int same = f.n_tensors == m->graph.n_params;
            for (int i = 0; same && i < m->graph.n_params; i++) {
                const st_tensor *t = st_find(&f, m->graph.params[i].name);
                float *want = t ? malloc((size_t)t->numel * sizeof(float)) : NULL;
                same = want && t->numel == m->graph.params[i].numel;
                if (same) {
                    st_to_f32(t, want);
                    same = memcmp(want, m->weights[i], (size_t)t->numel * sizeof(float)) == 0;
                }
                free(want);
            }
            CHECK(same && file_numel == m->graph.n_weights, "%s: %d tensors, %lld weights bound as stored",
                  names[k], f.n_tensors, (long long)file_numel);
            printf("%s %s: %d params, %lld weights\n", same ? "ok  " : "FAIL", names[k], m->graph.n_params,
                   (long long)m->graph.n_weights);
        }
        ddpm_model_free(m);
        st_close(&f);
    }
}

/* Runs one part and prints its count of checks. */
static void run(const char *name, void (*fn)(void))
{
    int checks = test_checks, failures = test_failures;
    fn();
    printf("== %s: %d checks, %d failed\n", name, test_checks - checks, test_failures - failures);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/ddpm_test_model_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "FAIL cannot create a temporary directory\n");
        return 1;
    }
    run("fp16/bf16", test_half);
    run("reference files", test_reference_files);
    run("round trip", test_round_trip);
    run("hostile files", test_hostile);
    run("mutations", test_mutations);
    run("config JSON", test_config);
    run("models", test_models);
    run("torch fixtures", test_torch_fixtures);
    rmdir(tmp_dir);
    return test_summary("model");
}
