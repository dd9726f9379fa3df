/* safetensors.c: a reader that treats every file as hostile (its own strict JSON parser for the header,
 * every size and offset checked before use) and an atomic writer; fp16/bf16 conversions. */
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER 100000000u /* bytes of JSON header, as the reference implementation */
#define ST_MAX_NAME 255          /* bytes of a tensor name */
#define ST_MAX_META_KEY 1024     /* bytes of a metadata key */
#define ST_MAX_DEPTH 32          /* nesting of values skipped inside a tensor entry */

static const char *const dtype_names[] = {"F32", "F16", "BF16"};
static const int dtype_sizes[] = {4, 2, 2};
/* Valid safetensors dtypes this library does not read: refused as unsupported, not as malformed. */
static const char *const other_dtypes[] = {"F64", "I64", "I32",  "I16",     "I8",      "U64", "U32",
                                           "U16", "U8",  "BOOL", "F8_E4M3", "F8_E5M2", "F4"};

/* ---- little-endian helpers -------------------------------------------------------------------- */

static uint64_t load_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t load_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- fp16 / bf16 ------------------------------------------------------------------------------ */

static float bits_to_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

float st_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf, NaN (payload kept) */
        return bits_to_float(sign | 0x7f800000u | mant << 13);
    return bits_to_float(sign | (exp + 112) << 23 | mant << 13);
}

uint16_t st_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: stays a (quiet) NaN */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 rounds (to even) past 65504: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a half subnormal or zero */
        uint32_t exp = ax >> 23;
        if (exp < 102) /* below 2^-25: rounds to zero */
            return sign;
        uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - exp; /* 14..24: result = mant >> shift in units of 2^-24 */
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t h = (ax >> 13) - (112u << 10), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float st_bf16_to_float(uint16_t h)
{
    return bits_to_float((uint32_t)h << 16);
}

void st_to_f32(const st_tensor *t, float *dst)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        for (int64_t i = 0; i < t->numel; i++)
            dst[i] = bits_to_float(load_u32le(p + 4 * i));
        break;
    case ST_F16:
        for (int64_t i = 0; i < t->numel; i++)
            dst[i] = st_half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case ST_BF16:
        for (int64_t i = 0; i < t->numel; i++)
            dst[i] = st_bf16_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    }
}

/* ---- UTF-8 ------------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at p (at most n bytes available), 0 if invalid (overlong,
 * surrogate, above U+10FFFF, truncated). */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0)
        len = 2, cp = c & 0x1fu, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        len = 3, cp = c & 0x0fu, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        len = 4, cp = c & 0x07u, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static int utf8_valid(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    while (n > 0) {
        size_t l = utf8_seq(p, n);
        if (!l)
            return 0;
        p += l;
        n -= l;
    }
    return 1;
}

/* ---- strict JSON parsing of the header -------------------------------------------------------- */

typedef struct jp {
    const uint8_t *start, *p, *end;
    const char *what;
} jp;

static ddpm_result jerr(const jp *j, const char *msg)
{
    return ddpm_fail(DDPM_ERR_FORMAT, "%s: bad safetensors header at byte %zu: %s", j->what,
                     (size_t)(j->p - j->start) + 8, msg);
}

static void jws(jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* Skips whitespace, then consumes c if it is next. */
static int jaccept(jp *j, char c)
{
    jws(j);
    if (j->p < j->end && *j->p == (uint8_t)c) {
        j->p++;
        return 1;
    }
    return 0;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int jhex4(jp *j, uint32_t *out)
{
    if (j->end - j->p < 4)
        return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0)
            return 0;
        v = v << 4 | (uint32_t)h;
    }
    j->p += 4;
    *out = v;
    return 1;
}

/* A JSON string, decoded into a malloc'ed NUL-terminated *out (NULL when out is NULL: skip only).
 * Refuses control characters, invalid UTF-8, lone surrogates, \u0000 and more than max_len bytes. */
static ddpm_result jstring(jp *j, char **out, size_t max_len)
{
    if (out)
        *out = NULL;
    if (!jaccept(j, '"'))
        return jerr(j, "expected a string");
    /* the decoded text is never longer than the raw text */
    const uint8_t *q = j->p;
    while (q < j->end && *q != '"')
        q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
    if (q >= j->end)
        return jerr(j, "unterminated string");
    size_t raw = (size_t)(q - j->p);
    char *buf = NULL;
    if (out) {
        buf = malloc(raw + 1);
        if (!buf)
            return ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory reading the header", j->what);
    }
    size_t n = 0;
    ddpm_result r = DDPM_OK;
    while (*j->p != '"') {
        uint8_t c = *j->p;
        uint8_t enc[4];
        size_t len = 0;
        if (c < 0x20) {
            r = jerr(j, "control character in string");
            break;
        }
        if (c == '\\') {
            j->p++;
            uint8_t e = *j->p++;
            uint32_t cp = 0;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                uint32_t lo;
                if (!jhex4(j, &cp)) {
                    r = jerr(j, "bad \\u escape");
                    break;
                }
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    r = jerr(j, "lone low surrogate in string");
                    break;
                }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                        r = jerr(j, "lone high surrogate in string");
                        break;
                    }
                    j->p += 2;
                    if (!jhex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                        r = jerr(j, "bad surrogate pair in string");
                        break;
                    }
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                if (cp == 0) {
                    r = jerr(j, "NUL character in string");
                    break;
                }
                break;
            }
            default: j->p--; r = jerr(j, "bad escape in string");
            }
            if (r != DDPM_OK)
                break;
            if (cp < 0x80)
                enc[len++] = (uint8_t)cp;
            else if (cp < 0x800) {
                enc[len++] = (uint8_t)(0xc0 | cp >> 6);
                enc[len++] = (uint8_t)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                enc[len++] = (uint8_t)(0xe0 | cp >> 12);
                enc[len++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
                enc[len++] = (uint8_t)(0x80 | (cp & 0x3f));
            } else {
                enc[len++] = (uint8_t)(0xf0 | cp >> 18);
                enc[len++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
                enc[len++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
                enc[len++] = (uint8_t)(0x80 | (cp & 0x3f));
            }
        } else {
            len = utf8_seq(j->p, (size_t)(q - j->p));
            if (!len) {
                r = jerr(j, "invalid UTF-8 in string");
                break;
            }
            memcpy(enc, j->p, len);
            j->p += len;
        }
        if (n + len > max_len) {
            r = ddpm_fail(DDPM_ERR_FORMAT, "%s: bad safetensors header: a name is longer than %zu bytes",
                          j->what, max_len);
            break;
        }
        if (buf)
            memcpy(buf + n, enc, len);
        n += len;
    }
    if (r != DDPM_OK) {
        free(buf);
        return r;
    }
    j->p++; /* closing quote */
    if (buf) {
        buf[n] = 0;
        *out = buf;
    }
    return DDPM_OK;
}

/* A JSON number that must be an integer token (no fraction, no exponent) within int64. */
static ddpm_result jint(jp *j, int64_t *out)
{
    jws(j);
    int neg = 0;
    if (j->p < j->end && *j->p == '-') {
        neg = 1;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return jerr(j, "expected an integer");
    if (*j->p == '0' && j->end - j->p > 1 && j->p[1] >= '0' && j->p[1] <= '9')
        return jerr(j, "leading zero in a number");
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10)
            return jerr(j, "integer too large");
        v = v * 10 + d;
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return jerr(j, "expected an integer, found a fraction or exponent");
    *out = neg ? -(int64_t)v : (int64_t)v;
    return DDPM_OK;
}

static int jliteral(jp *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return 0;
    j->p += n;
    return 1;
}

/* Skips any JSON value (unknown keys inside a tensor entry), with bounded nesting. */
static ddpm_result jskip(jp *j, int depth)
{
    if (depth > ST_MAX_DEPTH)
        return jerr(j, "values nested too deeply");
    jws(j);
    if (j->p >= j->end)
        return jerr(j, "unexpected end of header");
    uint8_t c = *j->p;
    ddpm_result r;
    if (c == '"')
        return jstring(j, NULL, (size_t)-1);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        if (jaccept(j, close))
            return DDPM_OK;
        do {
            if (c == '{') {
                if ((r = jstring(j, NULL, (size_t)-1)) != DDPM_OK)
                    return r;
                if (!jaccept(j, ':'))
                    return jerr(j, "expected ':'");
            }
            if ((r = jskip(j, depth + 1)) != DDPM_OK)
                return r;
        } while (jaccept(j, ','));
        return jaccept(j, close) ? DDPM_OK
                                 : jerr(j, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    if (jliteral(j, "true") || jliteral(j, "false") || jliteral(j, "null"))
        return DDPM_OK;
    if (c == '-' || (c >= '0' && c <= '9')) { /* any JSON number */
        if (c == '-')
            j->p++;
        const uint8_t *d = j->p;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
        if (j->p == d)
            return jerr(j, "bad number");
        if (j->p < j->end && *j->p == '.') {
            d = ++j->p;
            while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
                j->p++;
            if (j->p == d)
                return jerr(j, "bad number");
        }
        if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
            j->p++;
            if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
                j->p++;
            d = j->p;
            while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
                j->p++;
            if (j->p == d)
                return jerr(j, "bad number");
        }
        return DDPM_OK;
    }
    return jerr(j, "expected a value");
}

/* ---- reader ----------------------------------------------------------------------------------- */

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

typedef struct span {
    uint64_t begin, end;
    int tensor;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* One tensor entry {"dtype": s, "shape": [..], "data_offsets": [b, e]} (other keys skipped). */
static ddpm_result parse_tensor(jp *j, st_tensor *t, uint64_t *begin, uint64_t *end, uint64_t data_size)
{
    ddpm_result r;
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    int64_t off[2] = {0, 0};
    char *key = NULL, *dt = NULL;
    if (!jaccept(j, '{'))
        return jerr(j, "a tensor entry must be an object");
    if (jaccept(j, '}'))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" has no dtype, shape or data_offsets", j->what,
                         t->name);
    do {
        if ((r = jstring(j, &key, ST_MAX_META_KEY)) != DDPM_OK)
            goto done;
        if (!jaccept(j, ':')) {
            r = jerr(j, "expected ':'");
            goto done;
        }
        if (strcmp(key, "dtype") == 0) {
            if (have_dtype++) {
                r = jerr(j, "duplicate key \"dtype\"");
                goto done;
            }
            if ((r = jstring(j, &dt, 32)) != DDPM_OK)
                goto done;
            int found = 0;
            for (int i = 0; i < (int)DDPM_ARRAY_LEN(dtype_names); i++)
                if (strcmp(dt, dtype_names[i]) == 0) {
                    t->dtype = (st_dtype)i;
                    found = 1;
                }
            if (!found) {
                for (size_t i = 0; i < DDPM_ARRAY_LEN(other_dtypes); i++)
                    if (strcmp(dt, other_dtypes[i]) == 0) {
                        r = ddpm_fail(
                            DDPM_ERR_UNSUPPORTED,
                            "%s: tensor \"%.64s\" has dtype %s; only F32, F16 and BF16 are supported",
                            j->what, t->name, dt);
                        goto done;
                    }
                r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" has unknown dtype \"%.32s\"", j->what,
                              t->name, dt);
                goto done;
            }
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++) {
                r = jerr(j, "duplicate key \"shape\"");
                goto done;
            }
            if (!jaccept(j, '[')) {
                r = jerr(j, "shape must be an array");
                goto done;
            }
            t->ndim = 0;
            if (!jaccept(j, ']')) {
                do {
                    int64_t d;
                    if ((r = jint(j, &d)) != DDPM_OK)
                        goto done;
                    if (t->ndim == 4) {
                        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" has more than 4 dimensions",
                                      j->what, t->name);
                        goto done;
                    }
                    if (d < 0) {
                        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" has a negative dimension %lld",
                                      j->what, t->name, (long long)d);
                        goto done;
                    }
                    t->shape[t->ndim++] = d;
                } while (jaccept(j, ','));
                if (!jaccept(j, ']')) {
                    r = jerr(j, "expected ',' or ']' in shape");
                    goto done;
                }
            }
        } else if (strcmp(key, "data_offsets") == 0) {
            if (have_offsets++) {
                r = jerr(j, "duplicate key \"data_offsets\"");
                goto done;
            }
            if (!jaccept(j, '[')) {
                r = jerr(j, "data_offsets must be an array");
                goto done;
            }
            if ((r = jint(j, &off[0])) != DDPM_OK)
                goto done;
            if (!jaccept(j, ',')) {
                r = jerr(j, "data_offsets must hold two integers");
                goto done;
            }
            if ((r = jint(j, &off[1])) != DDPM_OK)
                goto done;
            if (!jaccept(j, ']')) {
                r = jerr(j, "data_offsets must hold two integers");
                goto done;
            }
        } else if ((r = jskip(j, 1)) != DDPM_OK)
            goto done;
        free(key);
        key = NULL;
    } while (jaccept(j, ','));
    if (!jaccept(j, '}')) {
        r = jerr(j, "expected ',' or '}' in a tensor entry");
        goto done;
    }
    if (!have_dtype || !have_shape || !have_offsets) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" lacks %s", j->what, t->name,
                      !have_dtype   ? "dtype"
                      : !have_shape ? "shape"
                                    : "data_offsets");
        goto done;
    }
    int64_t numel = 1, bytes;
    for (int i = 0; i < t->ndim; i++)
        if (!ddpm_mul_ok(numel, t->shape[i], &numel)) {
            r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\": the shape's element count overflows",
                          j->what, t->name);
            goto done;
        }
    if (!ddpm_mul_ok(numel, dtype_sizes[t->dtype], &bytes)) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\": the byte size overflows", j->what, t->name);
        goto done;
    }
    t->numel = numel;
    if (off[0] < 0 || off[1] < 0 || off[0] > off[1]) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor \"%.64s\" has bad data_offsets [%lld, %lld]", j->what,
                      t->name, (long long)off[0], (long long)off[1]);
        goto done;
    }
    if ((uint64_t)off[1] > data_size) {
        r = ddpm_fail(DDPM_ERR_FORMAT,
                      "%s: tensor \"%.64s\": data_offsets [%lld, %lld] run past the data area (%llu bytes); "
                      "is the file truncated?",
                      j->what, t->name, (long long)off[0], (long long)off[1], (unsigned long long)data_size);
        goto done;
    }
    if (off[1] - off[0] != bytes) {
        r = ddpm_fail(DDPM_ERR_FORMAT,
                      "%s: tensor \"%.64s\": data_offsets span %lld bytes but %s shape needs %lld", j->what,
                      t->name, (long long)(off[1] - off[0]), dtype_names[t->dtype], (long long)bytes);
        goto done;
    }
    *begin = (uint64_t)off[0];
    *end = (uint64_t)off[1];
    r = DDPM_OK;
done:
    free(key);
    free(dt);
    return r;
}

/* "__metadata__": an object of string values. */
static ddpm_result parse_meta(jp *j, st_file *f)
{
    ddpm_result r;
    int cap = 0;
    if (!jaccept(j, '{'))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: __metadata__ must be an object of strings", j->what);
    if (jaccept(j, '}'))
        return DDPM_OK;
    do {
        if (f->n_meta == cap) {
            int ncap = cap ? cap * 2 : 8;
            st_meta *m = realloc(f->meta, (size_t)ncap * sizeof *m);
            if (!m)
                return ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory reading the header", j->what);
            f->meta = m;
            cap = ncap;
        }
        st_meta *m = &f->meta[f->n_meta];
        m->key = m->value = NULL;
        f->n_meta++;
        if ((r = jstring(j, &m->key, ST_MAX_META_KEY)) != DDPM_OK)
            return r;
        if (!jaccept(j, ':'))
            return jerr(j, "expected ':'");
        jws(j);
        if (j->p >= j->end || *j->p != '"')
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: __metadata__ value of \"%.64s\" is not a string", j->what,
                             m->key);
        if ((r = jstring(j, &m->value, (size_t)-1)) != DDPM_OK)
            return r;
    } while (jaccept(j, ','));
    if (!jaccept(j, '}'))
        return jerr(j, "expected ',' or '}' in __metadata__");
    return DDPM_OK;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

ddpm_result st_parse(uint8_t *buf, size_t size, const char *what, st_file *f)
{
    ddpm_result r = DDPM_OK;
    span *spans = NULL;
    int cap = 0, have_meta = 0;
    memset(f, 0, sizeof *f);
    f->buf = buf;
    f->size = size;
    if (!what)
        what = "safetensors";
    if (!buf && size) {
        r = ddpm_fail(DDPM_ERR_ARG, "%s: no data", what);
        goto fail;
    }
    if (size < 8) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: file too short for a safetensors header (%zu bytes)", what, size);
        goto fail;
    }
    uint64_t hlen = load_u64le(buf);
    if (hlen > size - 8) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: header length %llu runs past the end of the %zu-byte file", what,
                      (unsigned long long)hlen, size);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER) {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", what,
                      (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen == 0 || buf[8] != '{') {
        r = ddpm_fail(DDPM_ERR_FORMAT, "%s: not a safetensors file (the header does not start with '{')",
                      what);
        goto fail;
    }
    uint64_t data_size = size - 8 - hlen;
    jp j = {buf + 8, buf + 8, buf + 8 + hlen, what};
    j.p++; /* '{' */
    if (!jaccept(&j, '}')) {
        do {
            char *name = NULL;
            if ((r = jstring(&j, &name, ST_MAX_META_KEY)) != DDPM_OK)
                goto fail;
            if (!jaccept(&j, ':')) {
                free(name);
                r = jerr(&j, "expected ':'");
                goto fail;
            }
            if (strcmp(name, "__metadata__") == 0) {
                free(name);
                if (have_meta++) {
                    r = ddpm_fail(DDPM_ERR_FORMAT, "%s: duplicate __metadata__", what);
                    goto fail;
                }
                if ((r = parse_meta(&j, f)) != DDPM_OK)
                    goto fail;
                continue;
            }
            if (f->n_tensors == cap) {
                int ncap = cap ? cap * 2 : 64;
                st_tensor *t = realloc(f->tensors, (size_t)ncap * sizeof *t);
                span *s = t ? realloc(spans, (size_t)ncap * sizeof *s) : NULL;
                if (t)
                    f->tensors = t;
                if (s)
                    spans = s;
                if (!t || !s) {
                    free(name);
                    r = ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory reading the header", what);
                    goto fail;
                }
                cap = ncap;
            }
            st_tensor *t = &f->tensors[f->n_tensors];
            memset(t, 0, sizeof *t);
            t->name = name;
            f->n_tensors++;
            if (name[0] == 0 || strlen(name) > ST_MAX_NAME) {
                r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensor name %s", what,
                              name[0] ? "longer than 255 bytes" : "is empty");
                goto fail;
            }
            span *s = &spans[f->n_tensors - 1];
            s->tensor = f->n_tensors - 1;
            if ((r = parse_tensor(&j, t, &s->begin, &s->end, data_size)) != DDPM_OK)
                goto fail;
        } while (jaccept(&j, ','));
        if (!jaccept(&j, '}')) {
            r = jerr(&j, "expected ',' or '}'");
            goto fail;
        }
    }
    jws(&j); /* writers pad the header with spaces */
    if (j.p != j.end) {
        r = jerr(&j, "unexpected bytes after the header object");
        goto fail;
    }

    /* no two tensors may share bytes (empty tensors own none); gaps are allowed */
    if (f->n_tensors > 0)
        qsort(spans, (size_t)f->n_tensors, sizeof *spans, cmp_span);
    uint64_t reach = 0;
    int reach_t = -1;
    for (int i = 0; i < f->n_tensors; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (reach_t >= 0 && spans[i].begin < reach) {
            r = ddpm_fail(DDPM_ERR_FORMAT, "%s: tensors \"%.64s\" and \"%.64s\" overlap", what,
                          f->tensors[reach_t].name, f->tensors[spans[i].tensor].name);
            goto fail;
        }
        reach = spans[i].end;
        reach_t = spans[i].tensor;
    }
    const uint8_t *data = buf + 8 + hlen;
    for (int i = 0; i < f->n_tensors; i++)
        f->tensors[spans[i].tensor].data = data + spans[i].begin;

    /* sorted by name: duplicates become neighbours, and lookups are binary searches */
    if (f->n_tensors > 0)
        qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            r = ddpm_fail(DDPM_ERR_FORMAT, "%s: duplicate tensor name \"%.64s\"", what, f->tensors[i].name);
            goto fail;
        }
    if (f->n_meta > 0)
        qsort(f->meta, (size_t)f->n_meta, sizeof *f->meta, cmp_meta_key);
    for (int i = 1; i < f->n_meta; i++)
        if (strcmp(f->meta[i - 1].key, f->meta[i].key) == 0) {
            r = ddpm_fail(DDPM_ERR_FORMAT, "%s: duplicate __metadata__ key \"%.64s\"", what, f->meta[i].key);
            goto fail;
        }
    free(spans);
    return DDPM_OK;
fail:
    free(spans);
    st_close(f);
    return r;
}

ddpm_result st_open(const char *path, st_file *f)
{
    uint8_t *buf;
    size_t size;
    memset(f, 0, sizeof *f);
    if (!path)
        return ddpm_fail(DDPM_ERR_ARG, "st_open: no path");
    ddpm_result r = ddpm_read_file(path, DDPM_MAX_WEIGHT_FILE, &buf, &size);
    if (r != DDPM_OK)
        return r;
    return st_parse(buf, size, path, f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (!f || !name || f->n_tensors == 0)
        return NULL;
    st_tensor key;
    key.name = (char *)name;
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

const char *st_meta_get(const st_file *f, const char *key)
{
    if (!f || !key || f->n_meta == 0)
        return NULL;
    st_meta k;
    k.key = (char *)key;
    const st_meta *m = bsearch(&k, f->meta, (size_t)f->n_meta, sizeof *f->meta, cmp_meta_key);
    return m ? m->value : NULL;
}

/* ---- writer ----------------------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* A JSON string literal; s is valid UTF-8 (checked by the caller). */
static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_put(b, esc, 6);
        } else
            sb_put(b, (const char *)&c, 1);
    }
    sb_put(b, "\"", 1);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

ddpm_result st_write(const char *path, const st_out_tensor *t, int n, const st_meta *meta, int n_meta,
                     st_dtype dtype)
{
    if (!path || n < 0 || n_meta < 0 || (n > 0 && !t) || (n_meta > 0 && !meta))
        return ddpm_fail(DDPM_ERR_ARG, "st_write: bad arguments");
    if (dtype != ST_F32 && dtype != ST_F16)
        return ddpm_fail(DDPM_ERR_ARG, "st_write: %s: only F32 and F16 can be written", path);
    ddpm_result r = DDPM_OK;
    sbuf h = {0};
    uint8_t *file = NULL;
    const char **names = NULL;
    int64_t esize = dtype_sizes[dtype], off = 0;

    for (int i = 0; i < n_meta; i++)
        if (!meta[i].key || !meta[i].value || !utf8_valid(meta[i].key) || !utf8_valid(meta[i].value) ||
            strlen(meta[i].key) > ST_MAX_META_KEY)
            return ddpm_fail(DDPM_ERR_ARG, "st_write: %s: metadata entry %d is not a valid UTF-8 string pair",
                             path, i);
    names = malloc((size_t)(n + n_meta + 1) * sizeof *names);
    if (!names)
        return ddpm_fail(DDPM_ERR_NOMEM, "st_write: out of memory");
    for (int i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || !nm[0] || strlen(nm) > ST_MAX_NAME || !utf8_valid(nm) || strcmp(nm, "__metadata__") == 0) {
            r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: tensor %d has an invalid name", path, i);
            goto cleanup;
        }
        if (t[i].ndim < 0 || t[i].ndim > 4) {
            r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: tensor \"%.64s\" has %d dimensions (0..4)", path, nm,
                          t[i].ndim);
            goto cleanup;
        }
        int64_t numel = 1, bytes;
        for (int d = 0; d < t[i].ndim; d++)
            if (!ddpm_mul_ok(numel, t[i].shape[d], &numel)) {
                r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: tensor \"%.64s\" has a bad shape", path, nm);
                goto cleanup;
            }
        if (!ddpm_mul_ok(numel, esize, &bytes) || off > INT64_MAX - bytes || (numel > 0 && !t[i].data)) {
            r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: tensor \"%.64s\" has no data or is too large", path,
                          nm);
            goto cleanup;
        }
        off += bytes;
        names[i] = nm;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str_ptr);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: duplicate tensor name \"%.64s\"", path, names[i]);
            goto cleanup;
        }
    for (int i = 0; i < n_meta; i++)
        names[i] = meta[i].key;
    qsort(names, (size_t)n_meta, sizeof *names, cmp_str_ptr);
    for (int i = 1; i < n_meta; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            r = ddpm_fail(DDPM_ERR_ARG, "st_write: %s: duplicate metadata key \"%.64s\"", path, names[i]);
            goto cleanup;
        }

    /* header: {"__metadata__": {...}, "name": {"dtype", "shape", "data_offsets"}, ...}, padded with
     * spaces so the data area starts 8-byte aligned; tensors are contiguous in the given order */
    sb_str(&h, "{");
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i)
                sb_str(&h, ",");
            sb_json_string(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_string(&h, meta[i].value);
        }
        sb_str(&h, "}");
    }
    off = 0;
    for (int i = 0; i < n; i++) {
        char num[64];
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++)
            numel *= t[i].shape[d];
        if (i || n_meta > 0)
            sb_str(&h, ",");
        sb_json_string(&h, t[i].name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, dtype_names[dtype]);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
            sb_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%lld,%lld]}", (long long)off,
                 (long long)(off + numel * esize));
        sb_str(&h, num);
        off += numel * esize;
    }
    sb_str(&h, "}");
    while (!h.oom && h.n % 8 != 0)
        sb_str(&h, " ");
    if (h.oom) {
        r = ddpm_fail(DDPM_ERR_NOMEM, "st_write: out of memory");
        goto cleanup;
    }
    if ((uint64_t)off > (uint64_t)SIZE_MAX - 8 - h.n) {
        r = ddpm_fail(DDPM_ERR_NOMEM, "st_write: %s: the file would be too large", path);
        goto cleanup;
    }
    size_t total = 8 + h.n + (size_t)off;
    file = malloc(total);
    if (!file) {
        r = ddpm_fail(DDPM_ERR_NOMEM, "st_write: out of memory for %zu bytes", total);
        goto cleanup;
    }
    store_u64le(file, h.n);
    memcpy(file + 8, h.p, h.n);
    uint8_t *p = file + 8 + h.n;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++)
            numel *= t[i].shape[d];
        for (int64_t k = 0; k < numel; k++) {
            if (dtype == ST_F32) {
                uint32_t b;
                memcpy(&b, &t[i].data[k], 4);
                p[0] = (uint8_t)b;
                p[1] = (uint8_t)(b >> 8);
                p[2] = (uint8_t)(b >> 16);
                p[3] = (uint8_t)(b >> 24);
                p += 4;
            } else {
                uint16_t b = st_float_to_half(t[i].data[k]);
                p[0] = (uint8_t)b;
                p[1] = (uint8_t)(b >> 8);
                p += 2;
            }
        }
    }
    r = ddpm_write_file_atomic(path, file, total);
cleanup:
    free(file);
    free(h.p);
    free(names);
    return r;
}
