/* torchfile.c: PyTorch checkpoint reader: zip (zip64, CRC-checked) and legacy containers, a restricted
 * unpickler that builds dicts, lists and tensors as data only; every offset, size and index checked. */
#include "torchfile.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TF_MAX_NAME 255            /* bytes of a flattened tensor name, as safetensors */
#define TF_MAX_DEPTH 32            /* containers nested around a tensor */
#define TF_MAX_VISITS (1u << 22)   /* values walked while naming tensors (shared sub-trees count again) */
#define ZIP_MAX_ENTRIES (1u << 20) /* entries in the central directory */
#define ZIP_MAX_NAME 1024          /* bytes of an entry name */
#define PK_MAX_STACK (1u << 18)    /* pickle stack entries */
#define PK_MAX_VALUES (1u << 22)   /* values built (64 bytes each) */
#define PK_CHUNK 4096              /* values allocated at a time */
#define PK_MAX_ITEMS (1u << 26)    /* items held by all tuples, lists and dicts together */
#define PK_MAX_MARKS (1u << 16)    /* open MARKs */
#define PK_MAX_MEMO (1u << 22)     /* memo entries */
#define PK_MAX_SKIPPED_TEXT 2000   /* bytes of the "torch.skipped" list */
#define PK_LEGACY_MAGIC_LEN 10     /* the legacy format's LONG1 magic number, bytes */

static const uint8_t legacy_magic[PK_LEGACY_MAGIC_LEN] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                                          0x20, 0x6a, 0xa8, 0x50, 0x19};

/* ---- errors and little-endian loads ----------------------------------------------------------- */

/* ddpm_fail with "<what>: " in front. */
static ddpm_result tf_fail(ddpm_result code, const char *what, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static ddpm_result tf_fail(ddpm_result code, const char *what, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ddpm_fail(code, "%s: %s", what, msg);
}

static uint16_t ld16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p)
{
    return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

/* Copies up to 80 bytes of s into a printable, NUL-terminated form for messages. */
static const char *printable(char out[84], const char *s, size_t n)
{
    size_t k = n < 80 ? n : 80;
    for (size_t i = 0; i < k; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    strcpy(out + k, n > 80 ? "..." : "");
    return out;
}

/* ---- CRC-32 (zip's, reflected 0xEDB88320), slicing by 8 ---------------------------------------- */

typedef struct crc_tables {
    uint32_t t[8][256];
} crc_tables;

static void crc_init(crc_tables *c)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t v = i;
        for (int k = 0; k < 8; k++)
            v = (v >> 1) ^ (0xedb88320u & (0u - (v & 1)));
        c->t[0][i] = v;
    }
    for (int s = 1; s < 8; s++)
        for (int i = 0; i < 256; i++)
            c->t[s][i] = (c->t[s - 1][i] >> 8) ^ c->t[0][c->t[s - 1][i] & 0xff];
}

static uint32_t crc32_of(const crc_tables *c, const uint8_t *p, uint64_t n)
{
    uint32_t v = 0xffffffffu;
    while (n >= 8) {
        uint32_t a = v ^ ld32(p), b = ld32(p + 4);
        v = c->t[7][a & 0xff] ^ c->t[6][(a >> 8) & 0xff] ^ c->t[5][(a >> 16) & 0xff] ^ c->t[4][a >> 24] ^
            c->t[3][b & 0xff] ^ c->t[2][(b >> 8) & 0xff] ^ c->t[1][(b >> 16) & 0xff] ^ c->t[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        v = (v >> 8) ^ c->t[0][(v ^ *p++) & 0xff];
    return v ^ 0xffffffffu;
}

/* ---- zip -------------------------------------------------------------------------------------- */

typedef struct zip_entry {
    const char *name; /* into the file, not NUL-terminated */
    size_t name_len;
    uint64_t local, data, size; /* local header offset, data offset, data bytes */
    uint32_t crc;
    int crc_ok;
    /* when the entry is a storage: its dtype (index into storage_types) and element count */
    int storage_type;
    int64_t storage_numel;
} zip_entry;

typedef struct zip {
    const uint8_t *buf;
    uint64_t size;
    const char *what;
    zip_entry *e; /* sorted by name */
    size_t n;
    crc_tables *crc;
} zip;

static int cmp_entry_local(const void *a, const void *b)
{
    const zip_entry *x = a, *y = b;
    return x->local < y->local ? -1 : x->local > y->local;
}

static int cmp_name(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an < bn ? -1 : an > bn);
}

static int cmp_entry_name(const void *a, const void *b)
{
    const zip_entry *x = a, *y = b;
    return cmp_name(x->name, x->name_len, y->name, y->name_len);
}

static zip_entry *zip_find(const zip *z, const char *name, size_t len)
{
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(z->e[mid].name, z->e[mid].name_len, name, len);
        if (c == 0)
            return &z->e[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Checks an entry's CRC-32 once. */
static ddpm_result zip_check_crc(const zip *z, zip_entry *e)
{
    if (e->crc_ok)
        return DDPM_OK;
    uint32_t got = crc32_of(z->crc, z->buf + e->data, e->size);
    if (got != e->crc) {
        char nm[84];
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s is corrupt (CRC-32 %08x, expected %08x)",
                       printable(nm, e->name, e->name_len), got, e->crc);
    }
    e->crc_ok = 1;
    return DDPM_OK;
}

/* One central-directory entry at offset p (of at most avail bytes); fills e and returns its length. */
static ddpm_result zip_central_entry(const zip *z, uint64_t p, uint64_t avail, uint64_t data_end,
                                     zip_entry *e, uint64_t *len)
{
    const uint8_t *b = z->buf + p;
    char nm[84];
    if (avail < 46 || ld32(b) != 0x02014b50u)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "bad zip central directory entry at byte %llu",
                       (unsigned long long)p);
    uint16_t flags = ld16(b + 8), method = ld16(b + 10), nl = ld16(b + 28), xl = ld16(b + 30),
             cl = ld16(b + 32), disk = ld16(b + 34);
    uint64_t usize = ld32(b + 24), csize = ld32(b + 20), local = ld32(b + 42);
    uint32_t diskn = disk;
    if ((uint64_t)46 + nl + xl + cl > avail)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip central directory entry at byte %llu is truncated",
                       (unsigned long long)p);
    e->name = (const char *)b + 46;
    e->name_len = nl;
    printable(nm, e->name, nl);
    if (nl == 0 || nl > ZIP_MAX_NAME || memchr(e->name, 0, nl))
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry at byte %llu has a bad name \"%s\"",
                       (unsigned long long)p, nm);
    /* extra fields: the zip64 one (id 1) holds the 64-bit values whose 32-bit fields are saturated */
    const uint8_t *x = b + 46 + nl, *xe = x + xl;
    while (xe - x >= 4) {
        uint16_t id = ld16(x), l = ld16(x + 2);
        if (l > xe - x - 4)
            return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: extra field runs past its end", nm);
        if (id == 1) {
            const uint8_t *q = x + 4, *qe = q + l;
            uint64_t *fields[3] = {&usize, &csize, &local};
            for (int i = 0; i < 3; i++)
                if (*fields[i] == 0xffffffffu) {
                    if (qe - q < 8)
                        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: zip64 field too short", nm);
                    *fields[i] = ld64(q);
                    q += 8;
                }
            if (disk == 0xffff) {
                if (qe - q < 4)
                    return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: zip64 field too short", nm);
                diskn = ld32(q);
            }
        }
        x += 4 + l;
    }
    if (x != xe)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: malformed extra field", nm);
    if (flags & 0x41)
        return tf_fail(DDPM_ERR_UNSUPPORTED, z->what, "zip entry %s is encrypted", nm);
    if (method == 8)
        return tf_fail(DDPM_ERR_UNSUPPORTED, z->what,
                       "zip entry %s is compressed (deflate); torch.save stores entries uncompressed: "
                       "re-save the checkpoint with torch.save",
                       nm);
    if (method != 0)
        return tf_fail(DDPM_ERR_UNSUPPORTED, z->what, "zip entry %s uses compression method %u", nm, method);
    if (csize != usize)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s is stored but its sizes differ (%llu, %llu)",
                       nm, (unsigned long long)csize, (unsigned long long)usize);
    if (diskn != 0)
        return tf_fail(DDPM_ERR_UNSUPPORTED, z->what, "zip entry %s is on another disk (split archive)", nm);
    /* the local header and the data lie before the central directory */
    if (local > data_end || data_end - local < 30)
        return tf_fail(DDPM_ERR_FORMAT, z->what,
                       "zip entry %s: local header at byte %llu lies outside the archive's %llu data bytes",
                       nm, (unsigned long long)local, (unsigned long long)data_end);
    const uint8_t *h = z->buf + local;
    if (ld32(h) != 0x04034b50u)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: no local header at byte %llu", nm,
                       (unsigned long long)local);
    uint16_t lflags = ld16(h + 6), lmethod = ld16(h + 8), lnl = ld16(h + 26), lxl = ld16(h + 28);
    uint64_t data = local + 30 + lnl + lxl;
    if (data > data_end)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: local header runs past the data area", nm);
    if (lnl != nl || memcmp(h + 30, e->name, nl) != 0 || lmethod != method)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entry %s: local header disagrees with the directory",
                       nm);
    e->crc = ld32(b + 16);
    if (!(lflags & 8)) { /* no data descriptor: the local header carries the CRC and sizes */
        uint32_t lc = ld32(h + 18);
        if (ld32(h + 14) != e->crc || (lc != 0xffffffffu && lc != csize))
            return tf_fail(DDPM_ERR_FORMAT, z->what,
                           "zip entry %s: local header disagrees with the directory", nm);
    }
    if (csize > data_end - data)
        return tf_fail(DDPM_ERR_FORMAT, z->what,
                       "zip entry %s: %llu bytes at byte %llu run past the archive's data (truncated?)", nm,
                       (unsigned long long)csize, (unsigned long long)data);
    e->local = local;
    e->data = data;
    e->size = csize;
    e->crc_ok = 0;
    e->storage_type = -1;
    e->storage_numel = 0;
    *len = 46 + (uint64_t)nl + xl + cl;
    return DDPM_OK;
}

/* Reads the end records and the central directory; every entry checked against the file. */
static ddpm_result zip_open(zip *z)
{
    const uint8_t *b = z->buf;
    uint64_t size = z->size;
    if (size < 22)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "too short for a zip file (%llu bytes; truncated?)",
                       (unsigned long long)size);
    /* the end-of-central-directory record: its comment must reach exactly to the end of the file */
    uint64_t lo = size - 22 > 65535 ? size - 22 - 65535 : 0, eocd = UINT64_MAX;
    for (uint64_t p = size - 22 + 1; p-- > lo;)
        if (ld32(b + p) == 0x06054b50u && p + 22 + ld16(b + p + 20) == size) {
            eocd = p;
            break;
        }
    if (eocd == UINT64_MAX)
        return tf_fail(DDPM_ERR_FORMAT, z->what,
                       "no zip end-of-central-directory record (the file is truncated or not a zip)");
    const uint8_t *r = b + eocd;
    uint64_t n = ld16(r + 10), cd_size = ld32(r + 12), cd_off = ld32(r + 16), limit = eocd;
    if (ld16(r + 4) != 0 || ld16(r + 6) != 0 || ld16(r + 8) != ld16(r + 10))
        return tf_fail(DDPM_ERR_UNSUPPORTED, z->what, "split (multi-disk) zip archives are not supported");
    if (eocd >= 20 && ld32(r - 20) == 0x07064b50u) { /* zip64 locator, then the zip64 end record */
        const uint8_t *loc = r - 20;
        uint64_t at = ld64(loc + 8), loc_off = eocd - 20;
        if (ld32(loc + 4) != 0 || ld32(loc + 16) > 1)
            return tf_fail(DDPM_ERR_UNSUPPORTED, z->what,
                           "split (multi-disk) zip archives are not supported");
        if (at > loc_off || loc_off - at < 56 || ld32(b + at) != 0x06064b50u)
            return tf_fail(DDPM_ERR_FORMAT, z->what, "bad zip64 end record offset %llu",
                           (unsigned long long)at);
        const uint8_t *q = b + at;
        uint64_t rec = ld64(q + 4), n64 = ld64(q + 32), size64 = ld64(q + 40), off64 = ld64(q + 48);
        if (rec < 44 || rec > loc_off - at - 12 || ld32(q + 16) != 0 || ld32(q + 20) != 0 ||
            ld64(q + 24) != n64)
            return tf_fail(DDPM_ERR_FORMAT, z->what, "bad zip64 end record");
        if ((n != 0xffff && n != n64) || (cd_size != 0xffffffffu && cd_size != size64) ||
            (cd_off != 0xffffffffu && cd_off != off64))
            return tf_fail(DDPM_ERR_FORMAT, z->what, "zip64 end record disagrees with the zip end record");
        n = n64;
        cd_size = size64;
        cd_off = off64;
        limit = at;
    }
    if (cd_off > limit || cd_size > limit - cd_off)
        return tf_fail(DDPM_ERR_FORMAT, z->what,
                       "zip central directory (%llu bytes at %llu) lies outside the file (truncated?)",
                       (unsigned long long)cd_size, (unsigned long long)cd_off);
    if (n > cd_size / 46 || n > ZIP_MAX_ENTRIES)
        return tf_fail(DDPM_ERR_FORMAT, z->what, "zip claims %llu entries in a %llu-byte central directory",
                       (unsigned long long)n, (unsigned long long)cd_size);
    z->e = calloc(n ? n : 1, sizeof *z->e);
    if (!z->e)
        return tf_fail(DDPM_ERR_NOMEM, z->what, "out of memory for %llu zip entries", (unsigned long long)n);
    uint64_t p = cd_off;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = 0;
        ddpm_result res = zip_central_entry(z, p, cd_off + cd_size - p, cd_off, &z->e[i], &len);
        if (res != DDPM_OK)
            return res;
        p += len;
        z->n++;
    }
    /* each entry owns [local header, end of data); none may share a byte */
    qsort(z->e, z->n, sizeof *z->e, cmp_entry_local);
    for (size_t i = 1; i < z->n; i++)
        if (z->e[i].local < z->e[i - 1].data + z->e[i - 1].size) {
            char a[84], c[84];
            return tf_fail(DDPM_ERR_FORMAT, z->what, "zip entries %s and %s overlap",
                           printable(a, z->e[i - 1].name, z->e[i - 1].name_len),
                           printable(c, z->e[i].name, z->e[i].name_len));
        }
    qsort(z->e, z->n, sizeof *z->e, cmp_entry_name);
    for (size_t i = 1; i < z->n; i++)
        if (cmp_entry_name(&z->e[i - 1], &z->e[i]) == 0) {
            char a[84];
            return tf_fail(DDPM_ERR_FORMAT, z->what, "duplicate zip entry %s",
                           printable(a, z->e[i].name, z->e[i].name_len));
        }
    return DDPM_OK;
}

/* ---- pickle values ---------------------------------------------------------------------------- */

typedef enum {
    V_NONE,
    V_BOOL,
    V_INT,
    V_BIGINT, /* an integer wider than 64 bits: kept only as "some integer" */
    V_FLOAT,
    V_STR,
    V_BYTES,
    V_TUPLE,
    V_LIST,
    V_DICT, /* items: key, value, key, value, ... */
    V_GLOBAL,
    V_STORAGE,
    V_TENSOR,
} vkind;

static const char *const kind_names[] = {"None",  "bool", "int",  "int",    "float",   "str",   "bytes",
                                         "tuple", "list", "dict", "global", "storage", "tensor"};

typedef struct val val;
struct val {
    vkind kind;
    int ndim; /* tensor */
    union {
        int64_t i; /* bool, int; global: index into callables[], or G_STORAGE_FIRST + storage type */
        double d;  /* float */
        struct {
            const char *s; /* str, bytes: into the pickle, not NUL-terminated */
            size_t n;
        };
        struct {
            val **items; /* tuple, list, dict */
            size_t len, cap;
        };
        struct {
            zip_entry *st;         /* storage, tensor: the storage's zip entry */
            int64_t offset, numel; /* tensor: in elements */
            int64_t shape[4];
        };
    };
};

/* Globals the unpickler knows; anything else is refused by name. */
enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_REBUILD_PARAMETER_WITH_STATE,
    G_STORAGE_FIRST, /* storage classes follow, in storage_types[] order */
};
static const char *const callables[][2] = {
    {"collections", "OrderedDict"},
    {"torch._utils", "_rebuild_tensor"},
    {"torch._utils", "_rebuild_tensor_v2"},
    {"torch._utils", "_rebuild_parameter"},
    {"torch._utils", "_rebuild_parameter_with_state"},
};

/* Legacy typed storage classes (module torch): the dtype of the bytes behind a tensor. */
static const struct {
    const char *name, *dtype;
    int st; /* st_dtype, or -1: read and bounds-checked, then left out of the tensor table */
    int size;
} storage_types[] = {
    {"FloatStorage", "F32", ST_F32, 4},
    {"HalfStorage", "F16", ST_F16, 2},
    {"BFloat16Storage", "BF16", ST_BF16, 2},
    {"DoubleStorage", "F64", -1, 8},
    {"LongStorage", "I64", -1, 8},
    {"IntStorage", "I32", -1, 4},
    {"ShortStorage", "I16", -1, 2},
    {"CharStorage", "I8", -1, 1},
    {"ByteStorage", "U8", -1, 1},
    {"BoolStorage", "BOOL", -1, 1},
    {"ComplexFloatStorage", "C64", -1, 8},
    {"ComplexDoubleStorage", "C128", -1, 16},
};

typedef struct pk {
    const uint8_t *start, *p, *end;
    const char *what;
    zip *z;
    const char *prefix; /* "<archive>/" of data.pkl */
    size_t prefix_len;
    val **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    val **memo;
    size_t n_memo, memo_cap;
    val **chunks; /* values are allocated PK_CHUNK at a time, freed together */
    size_t n_chunks, chunks_cap, chunk_used, n_values, n_items;
    val none, yes, no; /* shared None, True, False */
    /* legacy format: storages by key (open addressing), created by persistent ids, located afterwards */
    int legacy;
    uint64_t seed;
    zip_entry **lst;
    size_t n_lst, lst_cap;
    ddpm_result new_err; /* why pk_new last failed (message recorded) */
} pk;

/* Grows *arr (elements of `size` bytes) to hold at least need; 0 on allocation failure. */
static int grow(void **arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 1;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * size);
    if (!p)
        return 0;
    *arr = p;
    *cap = ncap;
    return 1;
}

static ddpm_result pk_nomem(const pk *k)
{
    return tf_fail(DDPM_ERR_NOMEM, k->what, "out of memory reading the pickle");
}

/* Errors name the opcode's byte offset in data.pkl. */
static ddpm_result pk_err(const pk *k, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static ddpm_result pk_err(const pk *k, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ddpm_fail(DDPM_ERR_FORMAT, "%s: %s byte %zu: %s", k->what, k->legacy ? "file" : "data.pkl",
                     (size_t)(k->p - k->start), msg);
}

/* A new value, or NULL with the reason in k->new_err (a message recorded). */
static val *pk_new(pk *k, vkind kind)
{
    if (k->n_values >= PK_MAX_VALUES) {
        k->new_err = pk_err(k, "the pickle builds more than %u values", PK_MAX_VALUES);
        return NULL;
    }
    if (!k->n_chunks || k->chunk_used == PK_CHUNK) {
        val *c = NULL;
        if (grow((void **)&k->chunks, &k->chunks_cap, k->n_chunks + 1, sizeof *k->chunks))
            c = calloc(PK_CHUNK, sizeof *c);
        if (!c) {
            k->new_err = pk_nomem(k);
            return NULL;
        }
        k->chunks[k->n_chunks++] = c;
        k->chunk_used = 0;
    }
    val *v = &k->chunks[k->n_chunks - 1][k->chunk_used++];
    k->n_values++;
    v->kind = kind;
    return v;
}

static void pk_free(pk *k)
{
    for (size_t c = 0; c < k->n_chunks; c++) {
        size_t used = c + 1 == k->n_chunks ? k->chunk_used : PK_CHUNK;
        for (size_t i = 0; i < used; i++) {
            const val *v = &k->chunks[c][i];
            if (v->kind == V_TUPLE || v->kind == V_LIST || v->kind == V_DICT)
                free(v->items);
        }
        free(k->chunks[c]);
    }
    free(k->chunks);
    for (size_t i = 0; i < k->lst_cap; i++)
        free(k->lst[i]);
    free(k->lst);
    free(k->stack);
    free(k->marks);
    free(k->memo);
}

static ddpm_result pk_push(pk *k, val *v)
{
    if (!v)
        return k->new_err;
    if (k->sp >= PK_MAX_STACK)
        return pk_err(k, "pickle stack deeper than %u entries", PK_MAX_STACK);
    if (!grow((void **)&k->stack, &k->stack_cap, k->sp + 1, sizeof *k->stack))
        return pk_nomem(k);
    k->stack[k->sp++] = v;
    return DDPM_OK;
}

static ddpm_result pk_pop(pk *k, val **v)
{
    size_t floor = k->n_marks ? k->marks[k->n_marks - 1] : 0;
    if (k->sp <= floor)
        return pk_err(k, "pickle stack underflow");
    *v = k->stack[--k->sp];
    return DDPM_OK;
}

/* The stack position of the topmost MARK, which is removed. */
static ddpm_result pk_pop_mark(pk *k, size_t *pos)
{
    if (!k->n_marks)
        return pk_err(k, "no MARK on the pickle stack");
    *pos = k->marks[--k->n_marks];
    return DDPM_OK;
}

/* Counts n more container items against PK_MAX_ITEMS. */
static ddpm_result pk_items(pk *k, size_t n)
{
    if (n > PK_MAX_ITEMS - k->n_items)
        return pk_err(k, "the pickle's containers hold more than %u items", PK_MAX_ITEMS);
    k->n_items += n;
    return DDPM_OK;
}

static ddpm_result pk_append(pk *k, val *c, val *item)
{
    ddpm_result r = pk_items(k, 1);
    if (r != DDPM_OK)
        return r;
    if (!grow((void **)&c->items, &c->cap, c->len + 1, sizeof *c->items))
        return pk_nomem(k);
    c->items[c->len++] = item;
    return DDPM_OK;
}

/* A tuple or list of the stack items above position `from`, which are removed. */
static ddpm_result pk_collect(pk *k, vkind kind, size_t from)
{
    val *t = pk_new(k, kind);
    if (!t)
        return k->new_err;
    size_t n = k->sp - from;
    ddpm_result r = pk_items(k, n);
    if (r != DDPM_OK)
        return r;
    if (n && !grow((void **)&t->items, &t->cap, n, sizeof *t->items))
        return pk_nomem(k);
    if (n)
        memcpy(t->items, k->stack + from, n * sizeof *t->items);
    t->len = n;
    k->sp = from;
    return pk_push(k, t);
}

static ddpm_result pk_setitems(pk *k, val *d, size_t from)
{
    if (d->kind != V_DICT)
        return pk_err(k, "SETITEM on a %s", kind_names[d->kind]);
    if ((k->sp - from) % 2)
        return pk_err(k, "SETITEMS with an odd number of items");
    for (size_t i = from; i < k->sp; i++) {
        ddpm_result r = pk_append(k, d, k->stack[i]);
        if (r != DDPM_OK)
            return r;
    }
    k->sp = from;
    return DDPM_OK;
}

static ddpm_result pk_need(pk *k, size_t n)
{
    if ((size_t)(k->end - k->p) < n)
        return pk_err(k, "data.pkl ends inside an opcode (truncated)");
    return DDPM_OK;
}

/* A global: allowed ones become V_GLOBAL, the rest are refused by name before anything else happens. */
static ddpm_result pk_global(pk *k, const char *mod, size_t ml, const char *name, size_t nl)
{
    int id = -1;
    for (int i = 0; i < (int)DDPM_ARRAY_LEN(callables); i++)
        if (strlen(callables[i][0]) == ml && !memcmp(callables[i][0], mod, ml) &&
            strlen(callables[i][1]) == nl && !memcmp(callables[i][1], name, nl))
            id = i;
    if (ml == 5 && !memcmp(mod, "torch", 5))
        for (int i = 0; i < (int)DDPM_ARRAY_LEN(storage_types); i++)
            if (strlen(storage_types[i].name) == nl && !memcmp(storage_types[i].name, name, nl))
                id = G_STORAGE_FIRST + i;
    if (id < 0) {
        char a[84], b[84];
        return tf_fail(DDPM_ERR_FORMAT, k->what,
                       "pickle global %s.%s is not allowed (a checkpoint may only hold tensors, storages, "
                       "OrderedDict and plain data); nothing was run",
                       printable(a, mod, ml), printable(b, name, nl));
    }
    val *v = pk_new(k, V_GLOBAL);
    if (v)
        v->i = id;
    return pk_push(k, v);
}

/* A tuple of at most 4 non-negative ints into out; returns the count, -1 if malformed, -2 if too long. */
static int int_tuple(const val *v, int64_t out[4])
{
    if (v->kind != V_TUPLE && v->kind != V_LIST)
        return -1;
    for (size_t i = 0; i < v->len; i++)
        if (v->items[i]->kind != V_INT || v->items[i]->i < 0)
            return -1;
    if (v->len > 4)
        return -2;
    for (size_t i = 0; i < v->len; i++)
        out[i] = v->items[i]->i;
    return (int)v->len;
}

/* ---- the legacy format (PyTorch < 1.6): pickles, then each storage's bytes in key-list order ---- */

/* FNV-1a from a per-file seed, then a finalizer: keys crafted to collide cannot be precomputed. */
static uint64_t key_hash(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u ^ seed;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3u;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
    return h ^ (h >> 31);
}

/* The slot of key in the storage table: its entry, or the empty slot where it belongs. */
static zip_entry **legacy_slot(pk *k, const char *key, size_t n)
{
    size_t mask = k->lst_cap - 1;
    for (size_t i = (size_t)key_hash(k->seed, key, n) & mask;; i = (i + 1) & mask) {
        zip_entry *e = k->lst[i];
        if (!e || (e->name_len == n && !memcmp(e->name, key, n)))
            return &k->lst[i];
    }
}

/* A legacy persistent id: the storage of that key, created at its first mention. */
static ddpm_result pk_legacy_storage(pk *k, const val *key, int t, int64_t numel)
{
    if (2 * (k->n_lst + 1) > k->lst_cap) { /* grow the table to keep it at most half full */
        size_t ncap = k->lst_cap ? 2 * k->lst_cap : 64;
        zip_entry **old = k->lst;
        size_t old_cap = k->lst_cap;
        if (!(k->lst = calloc(ncap, sizeof *k->lst))) {
            k->lst = old;
            return pk_nomem(k);
        }
        k->lst_cap = ncap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i])
                *legacy_slot(k, old[i]->name, old[i]->name_len) = old[i];
        free(old);
    }
    zip_entry **slot = legacy_slot(k, key->s, key->n), *e = *slot;
    if (!e) {
        if (!(e = calloc(1, sizeof *e)))
            return pk_nomem(k);
        e->name = key->s;
        e->name_len = key->n;
        e->storage_type = t;
        e->storage_numel = numel;
        e->data = UINT64_MAX; /* located after the pickle */
        e->crc_ok = 1;
        *slot = e;
        k->n_lst++;
    } else if (e->storage_type != t || e->storage_numel != numel)
        return pk_err(k, "storage %.*s is claimed with two different types or sizes",
                      (int)(key->n < 80 ? key->n : 80), key->s);
    val *v = pk_new(k, V_STORAGE);
    if (v)
        v->st = e;
    return pk_push(k, v);
}

/* BINPERSID: ('storage', storage class, key, location, numel) names the zip entry <archive>/data/<key>. */
static ddpm_result pk_persistent(pk *k, val *pid)
{
    char nm[84];
    if (pid->kind != V_TUPLE || pid->len != (k->legacy ? 6u : 5u) || pid->items[0]->kind != V_STR ||
        pid->items[0]->n != 7 || memcmp(pid->items[0]->s, "storage", 7) != 0)
        return pk_err(k, "persistent id is not a ('storage', type, key, location, numel%s) tuple",
                      k->legacy ? ", view" : "");
    if (k->legacy && pid->items[5]->kind != V_NONE)
        return tf_fail(DDPM_ERR_UNSUPPORTED, k->what, "storage views of the legacy format are not supported");
    val *type = pid->items[1], *key = pid->items[2], *loc = pid->items[3], *numel = pid->items[4];
    if (type->kind != V_GLOBAL || type->i < G_STORAGE_FIRST)
        return pk_err(k, "persistent id names a storage type that is not a storage class");
    if (key->kind != V_STR || loc->kind != V_STR || numel->kind != V_INT || numel->i < 0)
        return pk_err(k, "malformed storage persistent id");
    int t = (int)type->i - G_STORAGE_FIRST;
    if (k->legacy)
        return pk_legacy_storage(k, key, t, numel->i);
    char path[ZIP_MAX_NAME + 1];
    if (key->n > ZIP_MAX_NAME - 5 - k->prefix_len)
        return pk_err(k, "storage key too long");
    memcpy(path, k->prefix, k->prefix_len);
    memcpy(path + k->prefix_len, "data/", 5);
    memcpy(path + k->prefix_len + 5, key->s, key->n);
    size_t len = k->prefix_len + 5 + key->n;
    zip_entry *e = zip_find(k->z, path, len);
    if (!e)
        return tf_fail(DDPM_ERR_FORMAT, k->what, "storage %s is missing from the archive",
                       printable(nm, path, len));
    if (e->storage_type < 0) {
        int64_t bytes;
        if (!ddpm_mul_ok(numel->i, storage_types[t].size, &bytes) || (uint64_t)bytes != e->size)
            return tf_fail(DDPM_ERR_FORMAT, k->what,
                           "storage %s holds %llu bytes but its %s type claims %lld elements",
                           printable(nm, path, len), (unsigned long long)e->size, storage_types[t].name,
                           (long long)numel->i);
        ddpm_result r = zip_check_crc(k->z, e);
        if (r != DDPM_OK)
            return r;
        e->storage_type = t;
        e->storage_numel = numel->i;
    } else if (e->storage_type != t || e->storage_numel != numel->i)
        return tf_fail(DDPM_ERR_FORMAT, k->what, "storage %s is claimed with two different types or sizes",
                       printable(nm, path, len));
    val *v = pk_new(k, V_STORAGE);
    if (v)
        v->st = e;
    return pk_push(k, v);
}

/* _rebuild_tensor(_v2)(storage, offset, size, stride, ...): a row-major view inside its storage. */
static ddpm_result pk_tensor(pk *k, val *args)
{
    int64_t shape[4] = {0}, stride[4] = {0};
    if (args->len < 4 || args->items[0]->kind != V_STORAGE || args->items[1]->kind != V_INT)
        return pk_err(k, "tensor rebuild arguments are not (storage, offset, size, stride, ...)");
    int nd = int_tuple(args->items[2], shape), ns = int_tuple(args->items[3], stride);
    if (nd == -2)
        return pk_err(k, "tensor with %zu dimensions (at most 4 are supported)", args->items[2]->len);
    if (nd < 0 || ns != nd)
        return pk_err(k, "tensor size and stride must be tuples of as many non-negative ints");
    zip_entry *e = args->items[0]->st;
    int64_t offset = args->items[1]->i, numel = 1, end;
    for (int i = 0; i < nd; i++)
        if (!ddpm_mul_ok(numel, shape[i], &numel))
            return pk_err(k, "tensor shape's element count overflows");
    if (offset < 0)
        return pk_err(k, "negative storage offset");
    if (numel > 0) {
        int64_t want = 1; /* row-major strides; a dimension of size 1 may have any stride */
        for (int i = nd - 1; i >= 0; i--) {
            if (shape[i] != 1 && stride[i] != want)
                return tf_fail(DDPM_ERR_UNSUPPORTED, k->what,
                               "tensor of storage %.*s is not contiguous (a view with strides); save "
                               "tensor.contiguous() or a state dict instead",
                               (int)(e->name_len < 80 ? e->name_len : 80), e->name);
            want *= shape[i];
        }
    }
    if (offset > INT64_MAX - numel || (end = offset + numel) > e->storage_numel)
        return tf_fail(
            DDPM_ERR_FORMAT, k->what, "tensor needs elements [%lld, %lld) but storage %.*s holds only %lld",
            (long long)offset, (long long)(offset > INT64_MAX - numel ? INT64_MAX : offset + numel),
            (int)(e->name_len < 80 ? e->name_len : 80), e->name, (long long)e->storage_numel);
    val *v = pk_new(k, V_TENSOR);
    if (!v)
        return k->new_err;
    v->st = e;
    v->offset = offset;
    v->ndim = nd;
    memcpy(v->shape, shape, sizeof shape);
    v->numel = numel;
    return pk_push(k, v);
}

/* REDUCE and NEWOBJ: only the allowed callables, with the arguments they take. */
static ddpm_result pk_call(pk *k, val *f, val *args, int newobj)
{
    if (f->kind != V_GLOBAL)
        return pk_err(k, "call of a %s", kind_names[f->kind]);
    if (args->kind != V_TUPLE)
        return pk_err(k, "call arguments are not a tuple");
    int id = (int)f->i;
    if (id >= G_STORAGE_FIRST || (newobj && id != G_ORDERED_DICT))
        return pk_err(k, "%s of %s.%s is not supported", newobj ? "NEWOBJ" : "REDUCE",
                      id >= G_STORAGE_FIRST ? "torch" : callables[id][0],
                      id >= G_STORAGE_FIRST ? storage_types[id - G_STORAGE_FIRST].name : callables[id][1]);
    switch (id) {
    case G_ORDERED_DICT:
        if (args->len != 0)
            return pk_err(k, "OrderedDict() with arguments");
        return pk_push(k, pk_new(k, V_DICT));
    case G_REBUILD_TENSOR:
        if (args->len != 4)
            return pk_err(k, "_rebuild_tensor takes 4 arguments, got %zu", args->len);
        return pk_tensor(k, args);
    case G_REBUILD_TENSOR_V2:
        if (args->len != 6 && args->len != 7)
            return pk_err(k, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", args->len);
        return pk_tensor(k, args);
    case G_REBUILD_PARAMETER:
    case G_REBUILD_PARAMETER_WITH_STATE:
        if (args->len != (id == G_REBUILD_PARAMETER ? 3u : 4u) || args->items[0]->kind != V_TENSOR)
            return pk_err(k, "%s takes (tensor, requires_grad, hooks%s)", callables[id][1],
                          id == G_REBUILD_PARAMETER ? "" : ", state");
        return pk_push(k, args->items[0]);
    }
    return pk_err(k, "unknown callable");
}

/* Reads an unsigned little-endian length of nb bytes and checks that many bytes follow. */
static ddpm_result pk_len(pk *k, int nb, uint64_t *len)
{
    ddpm_result r = pk_need(k, (size_t)nb);
    if (r != DDPM_OK)
        return r;
    uint64_t n = 0;
    for (int i = nb - 1; i >= 0; i--)
        n = n << 8 | k->p[i];
    k->p += nb;
    if (n > (uint64_t)(k->end - k->p))
        return pk_err(k, "a %llu-byte string runs past the end of data.pkl", (unsigned long long)n);
    *len = n;
    return DDPM_OK;
}

static ddpm_result pk_string(pk *k, vkind kind, int nb)
{
    uint64_t n = 0;
    ddpm_result r = pk_len(k, nb, &n);
    if (r != DDPM_OK)
        return r;
    val *v = pk_new(k, kind);
    if (!v)
        return k->new_err;
    v->s = (const char *)k->p;
    v->n = (size_t)n;
    k->p += n;
    return pk_push(k, v);
}

/* A GLOBAL argument: text up to '\n'. */
static ddpm_result pk_line(pk *k, const char **s, size_t *n)
{
    const uint8_t *nl = memchr(k->p, '\n', (size_t)(k->end - k->p));
    if (!nl)
        return pk_err(k, "GLOBAL without a newline (truncated)");
    *s = (const char *)k->p;
    *n = (size_t)(nl - k->p);
    k->p = nl + 1;
    return DDPM_OK;
}

static ddpm_result pk_memo_put(pk *k, uint64_t idx)
{
    if (!k->sp || (k->n_marks && k->sp <= k->marks[k->n_marks - 1]))
        return pk_err(k, "memo put with an empty stack");
    /* Python's pickler numbers memo entries 0, 1, 2, ...: a gap is refused rather than allocated */
    if (idx > k->n_memo)
        return pk_err(k, "memo index %llu out of order (next is %zu)", (unsigned long long)idx, k->n_memo);
    if (idx == k->n_memo) {
        if (k->n_memo >= PK_MAX_MEMO)
            return pk_err(k, "more than %u memo entries", PK_MAX_MEMO);
        if (!grow((void **)&k->memo, &k->memo_cap, k->n_memo + 1, sizeof *k->memo))
            return pk_nomem(k);
        k->n_memo++;
    }
    k->memo[idx] = k->stack[k->sp - 1];
    return DDPM_OK;
}

static ddpm_result pk_memo_get(pk *k, uint64_t idx)
{
    if (idx >= k->n_memo)
        return pk_err(k, "memo index %llu was never stored", (unsigned long long)idx);
    return pk_push(k, k->memo[idx]);
}

static ddpm_result pk_int(pk *k, int64_t v)
{
    val *x = pk_new(k, V_INT);
    if (x)
        x->i = v;
    return pk_push(k, x);
}

/* Runs the pickle in k->p .. k->end; *out is the value STOP returns. */
static ddpm_result pk_run(pk *k, val **out)
{
    ddpm_result r = DDPM_OK;
    while (r == DDPM_OK) {
        if (k->p >= k->end)
            return pk_err(k, "data.pkl ends without STOP (truncated)");
        const uint8_t *at = k->p;
        uint8_t op = *k->p++;
        val *a = NULL, *b = NULL, *c = NULL;
        uint64_t n = 0;
        size_t pos = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if ((r = pk_need(k, 1)) != DDPM_OK)
                break;
            if (*k->p < 2 || *k->p > 5)
                return pk_err(k, "pickle protocol %u (2 to 5 are read)", *k->p);
            k->p++;
            break;
        case 0x95: /* FRAME: a length hint only */ r = pk_len(k, 8, &n); break;
        case '.': /* STOP */
            if ((r = pk_pop(k, out)) != DDPM_OK)
                return r;
            return DDPM_OK;
        case '(': /* MARK */
            if (k->n_marks >= PK_MAX_MARKS)
                return pk_err(k, "more than %u nested MARKs", PK_MAX_MARKS);
            if (!grow((void **)&k->marks, &k->marks_cap, k->n_marks + 1, sizeof *k->marks))
                return pk_nomem(k);
            k->marks[k->n_marks++] = k->sp;
            break;
        case '0': /* POP */ r = pk_pop(k, &a); break;
        case '1': /* POP_MARK */
            if ((r = pk_pop_mark(k, &pos)) == DDPM_OK)
                k->sp = pos;
            break;
        case '2': /* DUP */
            if ((r = pk_pop(k, &a)) == DDPM_OK && (r = pk_push(k, a)) == DDPM_OK)
                r = pk_push(k, a);
            break;
        case 'N': r = pk_push(k, &k->none); break;
        case 0x88: r = pk_push(k, &k->yes); break; /* NEWTRUE */
        case 0x89: r = pk_push(k, &k->no); break;  /* NEWFALSE */
        case 'K':                                  /* BININT1 */
            if ((r = pk_need(k, 1)) == DDPM_OK)
                r = pk_int(k, *k->p++);
            break;
        case 'M': /* BININT2 */
            if ((r = pk_need(k, 2)) == DDPM_OK) {
                k->p += 2;
                r = pk_int(k, ld16(k->p - 2));
            }
            break;
        case 'J': /* BININT: signed 32-bit */
            if ((r = pk_need(k, 4)) == DDPM_OK) {
                k->p += 4;
                r = pk_int(k, (int32_t)ld32(k->p - 4));
            }
            break;
        case 0x8a: /* LONG1 */
        case 0x8b: /* LONG4: n-byte two's complement */
            if ((r = pk_len(k, op == 0x8a ? 1 : 4, &n)) != DDPM_OK)
                break;
            if (n <= 8) {
                uint64_t v = 0;
                for (int i = (int)n - 1; i >= 0; i--)
                    v = v << 8 | k->p[i];
                if (n > 0 && n < 8 && (k->p[n - 1] & 0x80))
                    v |= ~(uint64_t)0 << (8 * n);
                k->p += n;
                r = pk_int(k, (int64_t)v);
            } else {
                k->p += n;
                r = pk_push(k, pk_new(k, V_BIGINT));
            }
            break;
        case 'G': /* BINFLOAT: big-endian double */
            if ((r = pk_need(k, 8)) == DDPM_OK) {
                uint64_t bits = 0;
                for (int i = 0; i < 8; i++)
                    bits = bits << 8 | k->p[i];
                k->p += 8;
                if ((a = pk_new(k, V_FLOAT)) != NULL)
                    memcpy(&a->d, &bits, 8);
                r = pk_push(k, a);
            }
            break;
        case 'X': r = pk_string(k, V_STR, 4); break;    /* BINUNICODE */
        case 0x8c: r = pk_string(k, V_STR, 1); break;   /* SHORT_BINUNICODE */
        case 0x8d: r = pk_string(k, V_STR, 8); break;   /* BINUNICODE8 */
        case 'T': r = pk_string(k, V_STR, 4); break;    /* BINSTRING (Python 2 str) */
        case 'U': r = pk_string(k, V_STR, 1); break;    /* SHORT_BINSTRING */
        case 'B': r = pk_string(k, V_BYTES, 4); break;  /* BINBYTES */
        case 'C': r = pk_string(k, V_BYTES, 1); break;  /* SHORT_BINBYTES */
        case 0x8e: r = pk_string(k, V_BYTES, 8); break; /* BINBYTES8 */
        case 0x96: r = pk_string(k, V_BYTES, 8); break; /* BYTEARRAY8 */
        case ')': r = pk_collect(k, V_TUPLE, k->sp); break;
        case 't': /* TUPLE */
            if ((r = pk_pop_mark(k, &pos)) == DDPM_OK)
                r = pk_collect(k, V_TUPLE, pos);
            break;
        case 0x85: /* TUPLE1..3 */
        case 0x86:
        case 0x87: {
            size_t cnt = (size_t)(op - 0x84), floor = k->n_marks ? k->marks[k->n_marks - 1] : 0;
            if (k->sp < floor + cnt)
                return pk_err(k, "pickle stack underflow");
            r = pk_collect(k, V_TUPLE, k->sp - cnt);
            break;
        }
        case ']': r = pk_push(k, pk_new(k, V_LIST)); break;
        case 'l': /* LIST */
            if ((r = pk_pop_mark(k, &pos)) == DDPM_OK)
                r = pk_collect(k, V_LIST, pos);
            break;
        case 'a': /* APPEND */
            if ((r = pk_pop(k, &b)) != DDPM_OK || (r = pk_pop(k, &a)) != DDPM_OK)
                break;
            if (a->kind != V_LIST)
                return pk_err(k, "APPEND to a %s", kind_names[a->kind]);
            if ((r = pk_append(k, a, b)) == DDPM_OK)
                r = pk_push(k, a);
            break;
        case 'e': /* APPENDS */
            if ((r = pk_pop_mark(k, &pos)) != DDPM_OK)
                break;
            if (pos == 0 || (k->n_marks && pos <= k->marks[k->n_marks - 1]))
                return pk_err(k, "APPENDS without a list");
            a = k->stack[pos - 1];
            if (a->kind != V_LIST)
                return pk_err(k, "APPENDS to a %s", kind_names[a->kind]);
            for (size_t i = pos; i < k->sp && r == DDPM_OK; i++)
                r = pk_append(k, a, k->stack[i]);
            k->sp = pos;
            break;
        case '}': r = pk_push(k, pk_new(k, V_DICT)); break;
        case 'd': /* DICT */
            if ((r = pk_pop_mark(k, &pos)) != DDPM_OK)
                break;
            if ((a = pk_new(k, V_DICT)) == NULL)
                return k->new_err;
            if ((r = pk_setitems(k, a, pos)) == DDPM_OK)
                r = pk_push(k, a);
            break;
        case 's': /* SETITEM */
            if ((r = pk_pop(k, &c)) != DDPM_OK || (r = pk_pop(k, &b)) != DDPM_OK ||
                (r = pk_pop(k, &a)) != DDPM_OK)
                break;
            if (a->kind != V_DICT)
                return pk_err(k, "SETITEM on a %s", kind_names[a->kind]);
            if ((r = pk_append(k, a, b)) == DDPM_OK && (r = pk_append(k, a, c)) == DDPM_OK)
                r = pk_push(k, a);
            break;
        case 'u': /* SETITEMS */
            if ((r = pk_pop_mark(k, &pos)) != DDPM_OK)
                break;
            if (pos == 0 || (k->n_marks && pos <= k->marks[k->n_marks - 1]))
                return pk_err(k, "SETITEMS without a dict");
            r = pk_setitems(k, k->stack[pos - 1], pos);
            break;
        case 'h': /* BINGET */
            if ((r = pk_need(k, 1)) == DDPM_OK)
                r = pk_memo_get(k, *k->p++);
            break;
        case 'j': /* LONG_BINGET */
            if ((r = pk_need(k, 4)) == DDPM_OK) {
                k->p += 4;
                r = pk_memo_get(k, ld32(k->p - 4));
            }
            break;
        case 'q': /* BINPUT */
            if ((r = pk_need(k, 1)) == DDPM_OK)
                r = pk_memo_put(k, *k->p++);
            break;
        case 'r': /* LONG_BINPUT */
            if ((r = pk_need(k, 4)) == DDPM_OK) {
                k->p += 4;
                r = pk_memo_put(k, ld32(k->p - 4));
            }
            break;
        case 0x94: r = pk_memo_put(k, k->n_memo); break; /* MEMOIZE */
        case 'c': {                                      /* GLOBAL */
            const char *mod = NULL, *name = NULL;
            size_t ml = 0, nl = 0;
            if ((r = pk_line(k, &mod, &ml)) == DDPM_OK && (r = pk_line(k, &name, &nl)) == DDPM_OK)
                r = pk_global(k, mod, ml, name, nl);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if ((r = pk_pop(k, &b)) != DDPM_OK || (r = pk_pop(k, &a)) != DDPM_OK)
                break;
            if (a->kind != V_STR || b->kind != V_STR)
                return pk_err(k, "STACK_GLOBAL of non-strings");
            r = pk_global(k, a->s, a->n, b->s, b->n);
            break;
        case 'R':  /* REDUCE */
        case 0x81: /* NEWOBJ */
            if ((r = pk_pop(k, &b)) != DDPM_OK || (r = pk_pop(k, &a)) != DDPM_OK)
                break;
            r = pk_call(k, a, b, op == 0x81);
            break;
        case 'b': /* BUILD: only an OrderedDict's attributes (a state dict's _metadata), dropped */
            if ((r = pk_pop(k, &b)) != DDPM_OK || (r = pk_pop(k, &a)) != DDPM_OK)
                break;
            if (a->kind != V_DICT)
                return pk_err(k, "BUILD on a %s", kind_names[a->kind]);
            r = pk_push(k, a);
            break;
        case 'Q': /* BINPERSID */
            if ((r = pk_pop(k, &a)) == DDPM_OK)
                r = pk_persistent(k, a);
            break;
        default: {
            static const struct {
                uint8_t op;
                const char *name;
            } refused[] = {
                {'i', "INST"},
                {'o', "OBJ"},
                {0x82, "EXT1"},
                {0x83, "EXT2"},
                {0x84, "EXT4"},
                {'P', "PERSID"},
                {0x92, "NEWOBJ_EX"},
                {'I', "INT"},
                {'L', "LONG"},
                {'F', "FLOAT"},
                {'S', "STRING"},
                {'V', "UNICODE"},
                {'p', "PUT"},
                {'g', "GET"},
                {0x8f, "EMPTY_SET"},
                {0x90, "ADDITEMS"},
                {0x91, "FROZENSET"},
                {0x97, "NEXT_BUFFER"},
                {0x98, "READONLY_BUFFER"},
            };
            k->p = at;
            for (size_t i = 0; i < DDPM_ARRAY_LEN(refused); i++)
                if (refused[i].op == op)
                    return pk_err(k, "pickle opcode %s (0x%02x) is not allowed in a checkpoint",
                                  refused[i].name, op);
            return pk_err(k, "unknown pickle opcode 0x%02x", op);
        }
        }
    }
    return r;
}

/* ---- naming the tensors ----------------------------------------------------------------------- */

typedef struct namer {
    const char *what;
    st_file *f;
    int cap;
    char skipped[PK_MAX_SKIPPED_TEXT + 8];
    size_t skipped_len;
    int n_skipped;
    unsigned visits;
} namer;

static int utf8_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0)
            len = 2, cp = c & 0x1fu, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            len = 3, cp = c & 0x0fu, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
            len = 4, cp = c & 0x07u, min = 0x10000;
        else
            return 0;
        if (len > n - i)
            return 0;
        for (size_t j = 1; j < len; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + j] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

static ddpm_result name_tensor(namer *m, const val *t, const char *name)
{
    const int st = storage_types[t->st->storage_type].st;
    if (st < 0) { /* a dtype the tensor table cannot hold: listed in "torch.skipped" */
        char item[TF_MAX_NAME + 16];
        int l = snprintf(item, sizeof item, "%s%s (%s)", m->n_skipped ? ", " : "", name,
                         storage_types[t->st->storage_type].dtype);
        if (m->skipped_len + (size_t)l <= PK_MAX_SKIPPED_TEXT) {
            memcpy(m->skipped + m->skipped_len, item, (size_t)l + 1);
            m->skipped_len += (size_t)l;
        } else if (m->skipped_len < PK_MAX_SKIPPED_TEXT + 1) {
            memcpy(m->skipped + m->skipped_len, ", ...", 6);
            m->skipped_len = PK_MAX_SKIPPED_TEXT + 1;
        }
        m->n_skipped++;
        return DDPM_OK;
    }
    st_file *f = m->f;
    if (f->n_tensors == m->cap) {
        int ncap = m->cap ? m->cap * 2 : 64;
        st_tensor *nt = realloc(f->tensors, (size_t)ncap * sizeof *nt);
        if (!nt)
            return tf_fail(DDPM_ERR_NOMEM, m->what, "out of memory for the tensor table");
        f->tensors = nt;
        m->cap = ncap;
    }
    st_tensor *o = &f->tensors[f->n_tensors];
    memset(o, 0, sizeof *o);
    if (!(o->name = strdup(name)))
        return tf_fail(DDPM_ERR_NOMEM, m->what, "out of memory for the tensor table");
    f->n_tensors++;
    o->dtype = (st_dtype)st;
    o->ndim = t->ndim;
    memcpy(o->shape, t->shape, sizeof o->shape);
    o->numel = t->numel;
    o->data =
        m->f->buf + t->st->data + (uint64_t)t->offset * (uint64_t)storage_types[t->st->storage_type].size;
    return DDPM_OK;
}

/* Walks dicts, lists and tuples under v, whose path is name[0..len). */
static ddpm_result name_walk(namer *m, const val *v, char *name, size_t len, int depth)
{
    if (++m->visits > TF_MAX_VISITS)
        return tf_fail(DDPM_ERR_FORMAT, m->what, "the pickle's containers are shared more than %u times",
                       TF_MAX_VISITS);
    if (v->kind == V_TENSOR) {
        if (len == 0)
            return tf_fail(DDPM_ERR_FORMAT, m->what, "the file holds a single tensor, not a state dict");
        return name_tensor(m, v, name);
    }
    if (v->kind != V_DICT && v->kind != V_LIST && v->kind != V_TUPLE)
        return DDPM_OK;
    if (depth >= TF_MAX_DEPTH)
        return tf_fail(DDPM_ERR_FORMAT, m->what, "containers nested deeper than %d levels at \"%.80s\"",
                       TF_MAX_DEPTH, name);
    size_t step = v->kind == V_DICT ? 2 : 1;
    for (size_t i = 0; i + step <= v->len; i += step) {
        const val *key = v->kind == V_DICT ? v->items[i] : NULL, *x = v->items[i + step - 1];
        char part[TF_MAX_NAME + 2];
        size_t pl;
        if (x->kind != V_TENSOR && x->kind != V_DICT && x->kind != V_LIST && x->kind != V_TUPLE)
            continue; /* plain data: epochs, hyper-parameters */
        if (!key || key->kind == V_INT)
            pl = (size_t)snprintf(part, sizeof part, "%lld", (long long)(key ? key->i : (int64_t)(i / step)));
        else if (key->kind == V_STR) {
            if (key->n == 0 || key->n > TF_MAX_NAME || !utf8_ok((const uint8_t *)key->s, key->n))
                return tf_fail(DDPM_ERR_FORMAT, m->what, "a key under \"%.80s\" %s", name,
                               key->n == 0            ? "is empty"
                               : key->n > TF_MAX_NAME ? "is longer than 255 bytes"
                                                      : "is not UTF-8 or holds NUL");
            memcpy(part, key->s, key->n);
            pl = key->n;
        } else
            return tf_fail(DDPM_ERR_FORMAT, m->what, "a %s under \"%.80s\" has a %s key", kind_names[x->kind],
                           name, kind_names[key->kind]);
        if (len + (len > 0) + pl > TF_MAX_NAME)
            return tf_fail(DDPM_ERR_FORMAT, m->what, "tensor name \"%.80s...\" is longer than %d bytes", name,
                           TF_MAX_NAME);
        size_t nl = len;
        if (len > 0)
            name[nl++] = '.';
        memcpy(name + nl, part, pl);
        name[nl + pl] = 0;
        ddpm_result r = name_walk(m, x, name, nl + pl, depth + 1);
        name[len] = 0;
        if (r != DDPM_OK)
            return r;
    }
    return DDPM_OK;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* ---- the file --------------------------------------------------------------------------------- */

int torch_sniff(const uint8_t *head, size_t n)
{
    if (n >= 4 && head[0] == 'P' && head[1] == 'K' &&
        ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
        return 1;
    if (n >= 4 && head[0] == 0x80 && head[1] == 0x02 && head[2] == 0x8a && head[3] == PK_LEGACY_MAGIC_LEN)
        return 1;
    return n >= 262 && memcmp(head + 257, "ustar", 5) == 0;
}

static ddpm_result name_tensors(const val *top, const char *what, st_file *f)
{
    ddpm_result res;
    namer m;
    memset(&m, 0, sizeof m);
    m.what = what;
    m.f = f;
    char name[TF_MAX_NAME + 2] = "";
    if ((res = name_walk(&m, top, name, 0, 0)) != DDPM_OK)
        return res;
    if (f->n_tensors == 0) {
        res = m.n_skipped
                  ? tf_fail(DDPM_ERR_UNSUPPORTED, what, "no F32, F16 or BF16 tensors (only %s)", m.skipped)
                  : tf_fail(DDPM_ERR_FORMAT, what, "the checkpoint holds no tensors");
        return res;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            res = tf_fail(DDPM_ERR_FORMAT, what, "two tensors are named \"%.80s\"", f->tensors[i].name);
            return res;
        }
    if (m.n_skipped) {
        f->meta = calloc(1, sizeof *f->meta);
        if (!f->meta || !(f->meta[0].key = strdup("torch.skipped")) ||
            !(f->meta[0].value = strdup(m.skipped))) {
            if (f->meta)
                f->n_meta = 1;
            res = tf_fail(DDPM_ERR_NOMEM, what, "out of memory");
            return res;
        }
        f->n_meta = 1;
    }
    return DDPM_OK;
}

static ddpm_result torch_parse_zip(uint8_t *buf, size_t size, const char *what, st_file *f, zip *z)
{
    ddpm_result res = DDPM_OK;
    pk k;
    memset(&k, 0, sizeof k);
    z->buf = buf;
    z->size = size;
    z->what = what;
    if ((res = zip_open(z)) != DDPM_OK)
        return res;
    /* the pickle: "<archive>/data.pkl", the one entry of that name one level down */
    zip_entry *pkl = NULL;
    for (size_t i = 0; i < z->n; i++) {
        const zip_entry *e = &z->e[i];
        if (e->name_len > 9 && !memcmp(e->name + e->name_len - 9, "/data.pkl", 9) &&
            !memchr(e->name, '/', e->name_len - 9)) {
            if (pkl)
                return tf_fail(DDPM_ERR_FORMAT, what, "the archive holds more than one data.pkl");
            pkl = &z->e[i];
        }
    }
    if (!pkl)
        return tf_fail(DDPM_ERR_FORMAT, what,
                       "a zip without <archive>/data.pkl is not a torch.save checkpoint");
    if ((res = zip_check_crc(z, pkl)) != DDPM_OK)
        return res;
    k.prefix = pkl->name;
    k.prefix_len = pkl->name_len - 8; /* keeps the '/' */
    char path[ZIP_MAX_NAME + 16];
    memcpy(path, k.prefix, k.prefix_len);
    memcpy(path + k.prefix_len, "byteorder", 9);
    zip_entry *bo = zip_find(z, path, k.prefix_len + 9);
    if (bo) { /* written since torch 2.1; older files are little-endian */
        if ((res = zip_check_crc(z, bo)) != DDPM_OK)
            return res;
        if (bo->size == 3 && !memcmp(buf + bo->data, "big", 3))
            return tf_fail(DDPM_ERR_UNSUPPORTED, what, "big-endian checkpoints are not supported");
        if (bo->size != 6 || memcmp(buf + bo->data, "little", 6) != 0)
            return tf_fail(DDPM_ERR_FORMAT, what, "bad byteorder entry");
    }

    k.start = k.p = buf + pkl->data;
    k.end = k.p + pkl->size;
    k.what = what;
    k.z = z;
    k.none.kind = V_NONE;
    k.yes.kind = k.no.kind = V_BOOL;
    k.yes.i = 1;
    val *top = NULL;
    if ((res = pk_run(&k, &top)) == DDPM_OK)
        res = name_tensors(top, what, f);
    pk_free(&k);
    return res;
}

/* Runs the next pickle of a file holding several: a fresh stack and memo, values kept. */
static ddpm_result pk_next(pk *k, val **out)
{
    k->sp = k->n_marks = k->n_memo = 0;
    return pk_run(k, out);
}

static int is_str(const val *v, const char *s)
{
    return v->kind == V_STR && v->n == strlen(s) && !memcmp(v->s, s, v->n);
}

/* magic number, protocol version 1001, sys_info, the object, its storage keys, then per key: int64 LE element
 * count + the bytes. */
static ddpm_result torch_parse_legacy(uint8_t *buf, size_t size, const char *what, st_file *f)
{
    ddpm_result res;
    pk k;
    memset(&k, 0, sizeof k);
    k.start = k.p = buf;
    k.end = buf + size;
    k.what = what;
    k.legacy = 1;
    k.seed = (uint64_t)(uintptr_t)&k * 0x9e3779b97f4a7c15u ^ (uint64_t)time(NULL) ^ (uint64_t)clock();
    k.none.kind = V_NONE;
    k.yes.kind = k.no.kind = V_BOOL;
    k.yes.i = 1;
    val *magic = NULL, *proto = NULL, *info = NULL, *top = NULL, *keys = NULL;
    if ((res = pk_next(&k, &magic)) != DDPM_OK || (res = pk_next(&k, &proto)) != DDPM_OK ||
        (res = pk_next(&k, &info)) != DDPM_OK)
        goto cleanup;
    if (magic->kind != V_BIGINT || proto->kind != V_INT || proto->i != 1001) {
        res = tf_fail(DDPM_ERR_UNSUPPORTED, what, "legacy checkpoint of an unknown protocol version");
        goto cleanup;
    }
    int little = -1;
    for (size_t i = 0; info->kind == V_DICT && i + 1 < info->len; i += 2)
        if (is_str(info->items[i], "little_endian") && info->items[i + 1]->kind == V_BOOL)
            little = (int)info->items[i + 1]->i;
    if (little != 1) {
        res = little == 0
                  ? tf_fail(DDPM_ERR_UNSUPPORTED, what, "big-endian checkpoints are not supported")
                  : tf_fail(DDPM_ERR_FORMAT, what, "legacy checkpoint without sys_info.little_endian");
        goto cleanup;
    }
    if ((res = pk_next(&k, &top)) != DDPM_OK || (res = pk_next(&k, &keys)) != DDPM_OK)
        goto cleanup;
    if (keys->kind != V_LIST) {
        res = tf_fail(DDPM_ERR_FORMAT, what, "legacy checkpoint without its list of storage keys");
        goto cleanup;
    }
    for (size_t i = 0; i < keys->len; i++) {
        const val *key = keys->items[i];
        zip_entry *e = key->kind == V_STR && k.lst_cap ? *legacy_slot(&k, key->s, key->n) : NULL;
        char nm[84];
        if (!e || e->data != UINT64_MAX) {
            res = tf_fail(DDPM_ERR_FORMAT, what, "legacy storage key %s is %s",
                          key->kind == V_STR ? printable(nm, key->s, key->n) : "(not a string)",
                          e ? "listed twice" : "not used by any tensor");
            goto cleanup;
        }
        uint64_t at = (uint64_t)(k.p - buf);
        int64_t nbytes = 0;
        if (!ddpm_mul_ok(e->storage_numel, storage_types[e->storage_type].size, &nbytes))
            nbytes = INT64_MAX;
        uint64_t bytes = (uint64_t)nbytes;
        if (size - at < 8 || ld64(buf + at) != (uint64_t)e->storage_numel || size - at - 8 < bytes) {
            res = tf_fail(DDPM_ERR_FORMAT, what, "legacy storage %s at byte %llu: %s",
                          printable(nm, e->name, e->name_len), (unsigned long long)at,
                          size - at < 8 || size - at - 8 < bytes ? "truncated" : "wrong element count");
            goto cleanup;
        }
        e->data = at + 8;
        e->size = bytes;
        k.p += 8 + bytes;
    }
    for (size_t i = 0; i < k.lst_cap; i++)
        if (k.lst[i] && k.lst[i]->data == UINT64_MAX) {
            char nm[84];
            res = tf_fail(DDPM_ERR_FORMAT, what, "legacy storage %s has no data",
                          printable(nm, k.lst[i]->name, k.lst[i]->name_len));
            goto cleanup;
        }
    res = name_tensors(top, what, f);
cleanup:
    pk_free(&k);
    return res;
}

/* Names the tensors reachable from top into f (sorted, duplicates refused, skipped dtypes listed). */
ddpm_result torch_parse(uint8_t *buf, size_t size, const char *what, st_file *f)
{
    ddpm_result res;
    memset(f, 0, sizeof *f);
    f->buf = buf;
    f->size = size;
    if (!what)
        what = "checkpoint";
    if (!buf && size) {
        st_close(f);
        return tf_fail(DDPM_ERR_ARG, what, "no data");
    }
    if (size >= 4 && buf[0] == 0x80 && buf[1] == 0x02 && buf[2] == 0x8a && buf[3] == PK_LEGACY_MAGIC_LEN &&
        size >= 4 + PK_LEGACY_MAGIC_LEN && !memcmp(buf + 4, legacy_magic, PK_LEGACY_MAGIC_LEN))
        res = torch_parse_legacy(buf, size, what, f);
    else if (size >= 262 && !memcmp(buf + 257, "ustar", 5))
        res =
            tf_fail(DDPM_ERR_UNSUPPORTED, what, "the tar checkpoint format (PyTorch < 0.4) is not supported");
    else if (size < 4 || buf[0] != 'P' || buf[1] != 'K')
        res = tf_fail(DDPM_ERR_FORMAT, what, "not a PyTorch checkpoint (no zip signature)");
    else {
        crc_tables *crc = malloc(sizeof *crc);
        zip z;
        memset(&z, 0, sizeof z);
        if (!crc)
            res = tf_fail(DDPM_ERR_NOMEM, what, "out of memory");
        else {
            crc_init(crc);
            z.crc = crc;
            res = torch_parse_zip(buf, size, what, f, &z);
        }
        free(z.e);
        free(crc);
    }
    if (res != DDPM_OK)
        st_close(f);
    return res;
}

ddpm_result torch_open(const char *path, st_file *f)
{
    uint8_t *buf;
    size_t size;
    memset(f, 0, sizeof *f);
    if (!path)
        return ddpm_fail(DDPM_ERR_ARG, "torch_open: no path");
    ddpm_result r = ddpm_read_file(path, DDPM_MAX_WEIGHT_FILE, &buf, &size);
    if (r != DDPM_OK)
        return r;
    return torch_parse(buf, size, path, f);
}

ddpm_result torch_select(st_file *f, const char *prefix)
{
    size_t pl = strlen(prefix);
    int kept = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (!strncmp(f->tensors[i].name, prefix, pl) && f->tensors[i].name[pl] == '.')
            kept++;
    if (!kept)
        return ddpm_fail(DDPM_ERR_MODEL, "no tensors under \"%.80s\"", prefix);
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        if (!strncmp(t->name, prefix, pl) && t->name[pl] == '.') {
            memmove(t->name, t->name + pl + 1, strlen(t->name + pl + 1) + 1);
            f->tensors[n++] = *t;
        } else
            free(t->name);
    }
    f->n_tensors = n; /* names with a common prefix removed keep their order */
    return DDPM_OK;
}
