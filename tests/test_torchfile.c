/* test_torchfile.c: the PyTorch checkpoint reader against files torch.save wrote (values as torch.load reads
 * them), and hostile archives and pickles built here at run time, each refused by name with nothing run. */
#include "test_util.h"
#include "torchfile.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_dir[256];

/* A message from ddpm_last_error() is non-empty and one line. */
static int good_message(void)
{
    const char *m = ddpm_last_error();
    return m[0] != 0 && !strchr(m, '\n') && !strchr(m, '\r');
}

/* ---- byte buffers ----------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) {
            fprintf(stderr, "FAIL out of memory\n");
            exit(1);
        }
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put8(buf *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    put(b, &c, 1);
}

static void put_le(buf *b, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        put8(b, (unsigned)(v >> (8 * i)) & 0xff);
}

static void put_str(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (!d)
        exit(1);
    if (n)
        memcpy(d, p, n);
    return d;
}

/* ---- a zip writer (stored entries), independent of the reader ---------------------------------- */

static uint32_t crc32_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

typedef struct zentry {
    char name[64];
    const uint8_t *data;
    size_t size;
} zentry;

typedef struct zipfile {
    buf b;
    size_t local_at[64], cd_at[64], cd_off, eocd_at; /* n <= 64 entries */
} zipfile;

/* zip64: the 32-bit sizes and offsets saturated, the values in zip64 extra fields and end records. */
static void zip_build(zipfile *z, const zentry *e, int n, int zip64)
{
    memset(z, 0, sizeof *z);
    if (n > 64) {
        fprintf(stderr, "FAIL zip_build: more than 64 entries\n");
        exit(1);
    }
    buf *b = &z->b;
    for (int i = 0; i < n; i++) {
        uint32_t crc = crc32_bitwise(e[i].data, e[i].size);
        z->local_at[i] = b->n;
        put_le(b, 0x04034b50u, 4);
        put_le(b, zip64 ? 45 : 20, 2);
        put_le(b, 0, 2); /* flags */
        put_le(b, 0, 2); /* stored */
        put_le(b, 0, 4); /* time, date */
        put_le(b, crc, 4);
        put_le(b, zip64 ? 0xffffffffu : e[i].size, 4);
        put_le(b, zip64 ? 0xffffffffu : e[i].size, 4);
        put_le(b, strlen(e[i].name), 2);
        put_le(b, zip64 ? 20 : 0, 2);
        put_str(b, e[i].name);
        if (zip64) {
            put_le(b, 1, 2);
            put_le(b, 16, 2);
            put_le(b, e[i].size, 8);
            put_le(b, e[i].size, 8);
        }
        put(b, e[i].data, e[i].size);
    }
    z->cd_off = b->n;
    for (int i = 0; i < n; i++) {
        z->cd_at[i] = b->n;
        put_le(b, 0x02014b50u, 4);
        put_le(b, 45, 2);
        put_le(b, zip64 ? 45 : 20, 2);
        put_le(b, 0, 2);
        put_le(b, 0, 2);
        put_le(b, 0, 4);
        put_le(b, crc32_bitwise(e[i].data, e[i].size), 4);
        put_le(b, zip64 ? 0xffffffffu : e[i].size, 4);
        put_le(b, zip64 ? 0xffffffffu : e[i].size, 4);
        put_le(b, strlen(e[i].name), 2);
        put_le(b, zip64 ? 28 : 0, 2);
        put_le(b, 0, 2); /* comment */
        put_le(b, 0, 2); /* disk */
        put_le(b, 0, 2);
        put_le(b, 0, 4);
        put_le(b, zip64 ? 0xffffffffu : z->local_at[i], 4);
        put_str(b, e[i].name);
        if (zip64) {
            put_le(b, 1, 2);
            put_le(b, 24, 2);
            put_le(b, e[i].size, 8);
            put_le(b, e[i].size, 8);
            put_le(b, z->local_at[i], 8);
        }
    }
    size_t cd_size = b->n - z->cd_off;
    if (zip64) {
        size_t rec = b->n;
        put_le(b, 0x06064b50u, 4);
        put_le(b, 44, 8);
        put_le(b, 45, 2);
        put_le(b, 45, 2);
        put_le(b, 0, 4);
        put_le(b, 0, 4);
        put_le(b, (uint64_t)n, 8);
        put_le(b, (uint64_t)n, 8);
        put_le(b, cd_size, 8);
        put_le(b, z->cd_off, 8);
        put_le(b, 0x07064b50u, 4);
        put_le(b, 0, 4);
        put_le(b, rec, 8);
        put_le(b, 1, 4);
    }
    z->eocd_at = b->n;
    put_le(b, 0x06054b50u, 4);
    put_le(b, 0, 4);
    put_le(b, zip64 ? 0xffff : (unsigned)n, 2);
    put_le(b, zip64 ? 0xffff : (unsigned)n, 2);
    put_le(b, zip64 ? 0xffffffffu : cd_size, 4);
    put_le(b, zip64 ? 0xffffffffu : z->cd_off, 4);
    put_le(b, 0, 2);
}

/* bytes may exceed 8: the rest is zero-filled */
static void store_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = i < 8 ? (uint8_t)(v >> (8 * i)) : 0;
}

static uint64_t load_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The entries of a small zip torch.save wrote (trusting it: a fixture), pointing into data. */
static int zip_entries(const uint8_t *data, size_t size, zentry *e, int max)
{
    const uint8_t *eocd = data + size - 22;
    if (size < 22 || load_le(eocd, 4) != 0x06054b50u)
        return -1;
    int n = (int)load_le(eocd + 10, 2);
    const uint8_t *c = data + load_le(eocd + 16, 4);
    for (int i = 0; i < n && i < max; i++) {
        size_t nl = load_le(c + 28, 2), local = load_le(c + 42, 4);
        snprintf(e[i].name, sizeof e[i].name, "%.*s", (int)nl, (const char *)c + 46);
        e[i].size = load_le(c + 20, 4);
        e[i].data = data + local + 30 + load_le(data + local + 26, 2) + load_le(data + local + 28, 2);
        c += 46 + nl + load_le(c + 30, 2) + load_le(c + 32, 2);
    }
    return n < max ? n : max;
}

/* ---- a pickle writer -------------------------------------------------------------------------- */

static void pk_str(buf *b, const char *s)
{
    put8(b, 'X');
    put_le(b, strlen(s), 4);
    put_str(b, s);
}

static void pk_int(buf *b, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX) {
        put8(b, 'J');
        put_le(b, (uint64_t)v, 4);
    } else {
        put8(b, 0x8a); /* LONG1 */
        put8(b, 8);
        put_le(b, (uint64_t)v, 8);
    }
}

static void pk_global(buf *b, const char *mod, const char *name)
{
    put8(b, 'c');
    put_str(b, mod);
    put8(b, '\n');
    put_str(b, name);
    put8(b, '\n');
}

static void pk_ints(buf *b, int n, const int64_t *v)
{
    put8(b, '(');
    for (int i = 0; i < n; i++)
        pk_int(b, v[i]);
    put8(b, 't');
}

/* _rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict()) as torch writes it. */
static void pk_tensor(buf *b, const char *storage_class, const char *key, int64_t numel, int64_t offset,
                      int ndim, const int64_t *shape, const int64_t *stride)
{
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    put8(b, '(');
    put8(b, '(');
    pk_str(b, "storage");
    pk_global(b, "torch", storage_class);
    pk_str(b, key);
    pk_str(b, "cpu");
    pk_int(b, numel);
    put8(b, 't');
    put8(b, 'Q');
    pk_int(b, offset);
    pk_ints(b, ndim, shape);
    pk_ints(b, ndim, stride);
    put8(b, 0x89);
    pk_global(b, "collections", "OrderedDict");
    put8(b, ')');
    put8(b, 'R');
    put8(b, 't');
    put8(b, 'R');
}

/* A contiguous F32 tensor of the given shape at offset 0 of storage "0" holding numel elements. */
static void pk_simple_tensor(buf *b, int64_t numel, int ndim, const int64_t *shape)
{
    int64_t stride[4], s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i];
    }
    pk_tensor(b, "FloatStorage", "0", numel, 0, ndim, shape, stride);
}

/* A torch-like archive: archive/data.pkl, archive/data/0 (storage bytes), archive/version. */
static ddpm_result parse_archive(const buf *pkl, const uint8_t *storage, size_t storage_size, int zip64,
                                 st_file *f)
{
    zentry e[3] = {{"archive/data.pkl", pkl->p, pkl->n},
                   {"archive/data/0", storage, storage_size},
                   {"archive/version", (const uint8_t *)"3\n", 2}};
    zipfile z;
    zip_build(&z, e, 3, zip64);
    return torch_parse(z.b.p, z.b.n, "crafted.pt", f);
}

static float storage_f32[64];

static ddpm_result parse_pickle(const buf *pkl)
{
    st_file f;
    ddpm_result r = parse_archive(pkl, (const uint8_t *)storage_f32, sizeof storage_f32, 0, &f);
    if (r == DDPM_OK)
        st_close(&f);
    return r;
}

/* Checks that a call failed with `want` and a one-line message containing `needle`. */
#define CHECK_REFUSED(expr, want, needle, what)                                                              \
    do {                                                                                                     \
        ddpm_result r_ = (expr);                                                                             \
        int ok_ = r_ == (want) && good_message() && strstr(ddpm_last_error(), needle) != NULL;               \
        CHECK(ok_, "%s: got %s (%s), want %s mentioning \"%s\"", what, ddpm_result_string(r_),               \
              ddpm_last_error(), ddpm_result_string(want), needle);                                          \
        if (ok_)                                                                                             \
            printf("ok   refused %s: %s\n", what, ddpm_last_error());                                        \
    } while (0)

/* ---- real torch.save files -------------------------------------------------------------------- */

static int same_bits(const float *a, const float *b, int64_t n)
{
    return n == 0 || memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

/* Every tensor torch.load returned (the .expect file) is in f with its name, dtype, shape and exact value,
 * and nothing else is; the skipped ones are listed. */
static void compare_with_torch(const char *name, const st_file *f)
{
    char path[512];
    st_file want;
    snprintf(path, sizeof path, "torchfile/%s.expect.safetensors", name);
    test_open_fixture(path, &want);
    int matched = 0, skipped = 0;
    for (int i = 0; i < want.n_tensors; i++) {
        const st_tensor *w = &want.tensors[i], *g = st_find(f, w->name);
        char key[300];
        snprintf(key, sizeof key, "dtype.%s", w->name);
        const char *dt = st_meta_get(&want, key);
        static const char *const names[] = {"F32", "F16", "BF16"};
        CHECK(g != NULL, "%s: tensor %s missing", name, w->name);
        if (!g)
            continue;
        char shape[128] = "";
        for (int d = 0; d < g->ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? "," : "",
                     (long long)g->shape[d]);
        snprintf(key, sizeof key, "shape.%s", w->name);
        const char *want_shape = st_meta_get(&want, key);
        int shape_ok = g->numel == w->numel && want_shape && strcmp(shape, want_shape) == 0;
        CHECK(shape_ok, "%s: %s shape (%s) differs from torch's (%s)", name, w->name, shape,
              want_shape ? want_shape : "?");
        CHECK(dt && strcmp(names[g->dtype], dt) == 0, "%s: %s dtype %s, want %s", name, w->name,
              names[g->dtype], dt ? dt : "?");
        if (!shape_ok)
            continue;
        float *a = malloc((size_t)(g->numel + 1) * sizeof *a),
              *b = malloc((size_t)(g->numel + 1) * sizeof *b);
        st_to_f32(g, a);
        st_to_f32(w, b);
        CHECK(same_bits(a, b, g->numel), "%s: %s values differ from torch.load", name, w->name);
        matched += same_bits(a, b, g->numel);
        free(a);
        free(b);
    }
    CHECK(f->n_tensors == want.n_tensors, "%s: %d tensors, torch.load gives %d", name, f->n_tensors,
          want.n_tensors);
    const char *list = st_meta_get(f, "torch.skipped");
    for (int i = 0; i < want.n_meta; i++)
        if (!strncmp(want.meta[i].key, "skipped.", 8)) {
            char item[300];
            skipped++;
            snprintf(item, sizeof item, "%s (", want.meta[i].key + 8);
            CHECK(list && strstr(list, item), "%s: skipped %s (%s) not listed", name, want.meta[i].key + 8,
                  want.meta[i].value);
        }
    CHECK((skipped > 0) == (list != NULL), "%s: torch.skipped present without skipped tensors", name);
    printf("%s %s: %d of %d tensors bit-exact against torch.load, %d skipped (%s)\n",
           matched == want.n_tensors ? "ok  " : "FAIL", name, matched, want.n_tensors, skipped,
           list ? list : "-");
    st_close(&want);
}

static uint8_t *read_fixture(const char *name, size_t *size)
{
    uint8_t *data;
    if (ddpm_read_file(test_fixture_path(name), (size_t)1 << 30, &data, size) != DDPM_OK) {
        fprintf(stderr, "FAIL cannot read %s: %s\n", name, ddpm_last_error());
        exit(1);
    }
    return data;
}

static void test_real_files(void)
{
    static const char *const files[] = {"state.pt",  "module.pt", "nested.pt", "ddim.ckpt",
                                        "proto4.pt", "proto5.pt", "legacy.pt", "legacy_ddim.ckpt"};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(files); i++) {
        char path[256];
        snprintf(path, sizeof path, "torchfile/%s", files[i]);
        st_file f;
        ddpm_result r = torch_open(test_fixture_path(path), &f);
        CHECK(r == DDPM_OK, "%s: %s", files[i], ddpm_last_error());
        if (r != DDPM_OK)
            continue;
        compare_with_torch(files[i], &f);
        if (i == 0 || i == 6) { /* views of one storage share its bytes; a storage offset moves the pointer */
            const st_tensor *a = st_find(&f, "shared.a"), *b = st_find(&f, "shared.b");
            CHECK(a && b && b->data == a->data + 6 * 4, "shared.b starts 6 floats after shared.a");
            const st_tensor *s = st_find(&f, "scalar");
            CHECK(s && s->ndim == 0 && s->numel == 1, "a 0-dim tensor has ndim 0, numel 1");
        }
        st_close(&f);
    }

    /* the same file from memory, and the zip64 layout of the same entries */
    size_t size;
    uint8_t *data = read_fixture("torchfile/state.pt", &size);
    zentry e[16];
    int n = zip_entries(data, size, e, 16);
    CHECK(n >= 3, "state.pt lists its entries");
    zipfile z;
    zip_build(&z, e, n, 1);
    st_file f;
    ddpm_result r = torch_parse(z.b.p, z.b.n, "state.pt as zip64", &f);
    CHECK(r == DDPM_OK, "zip64 copy of state.pt: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        compare_with_torch("state.pt", &f);
        st_close(&f);
    }
    CHECK(torch_sniff(data, size) == 1, "torch_sniff: state.pt");
    free(data);
    data = read_fixture("unet_a.safetensors", &size);
    CHECK(torch_sniff(data, size) == 0, "torch_sniff: a safetensors file is not a checkpoint");
    free(data);
    data = read_fixture("torchfile/legacy.pt", &size);
    CHECK(torch_sniff(data, size) == 1, "torch_sniff: a legacy checkpoint");
    free(data);
    CHECK_REFUSED(torch_open(test_fixture_path("unet_a.safetensors"), &f), DDPM_ERR_FORMAT, "not a PyTorch",
                  "a safetensors file");
    CHECK_REFUSED(torch_open(test_fixture_path("torchfile/missing.pt"), &f), DDPM_ERR_IO, "missing.pt",
                  "a missing file");

    /* selecting one sub-dict: the DDIM list's EMA copy, and a nested state_dict */
    st_file m;
    if (torch_open(test_fixture_path("torchfile/module.pt"), &m) != DDPM_OK) {
        CHECK(0, "module.pt: %s", ddpm_last_error());
        return;
    }
    static const char *const picks[][2] = {
        {"ddim.ckpt", "4"}, {"ddim.ckpt", "0"}, {"nested.pt", "state_dict"}};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(picks); i++) {
        char path[256];
        snprintf(path, sizeof path, "torchfile/%s", picks[i][0]);
        if (torch_open(test_fixture_path(path), &f) != DDPM_OK) {
            CHECK(0, "%s: %s", picks[i][0], ddpm_last_error());
            continue;
        }
        int before = f.n_tensors;
        CHECK_REFUSED(torch_select(&f, "nothing"), DDPM_ERR_MODEL, "nothing", "selecting an absent prefix");
        CHECK(f.n_tensors == before, "a failed selection leaves the table alone");
        CHECK(torch_select(&f, picks[i][1]) == DDPM_OK, "select %s: %s", picks[i][1], ddpm_last_error());
        int same = f.n_tensors == m.n_tensors;
        for (int t = 0; same && t < m.n_tensors; t++) {
            const st_tensor *g = st_find(&f, m.tensors[t].name);
            same = g && g->numel == m.tensors[t].numel && g->dtype == m.tensors[t].dtype;
        }
        CHECK(same, "%s select \"%s\": the names of a module state dict", picks[i][0], picks[i][1]);
        printf("%s %s: select \"%s\" -> %d tensors (first %s)\n", same ? "ok  " : "FAIL", picks[i][0],
               picks[i][1], f.n_tensors, f.n_tensors ? f.tensors[0].name : "-");
        st_close(&f);
    }
    st_close(&m);
}

/* ---- hostile pickles -------------------------------------------------------------------------- */

/* A pickle that would run `cmd` through module.name(cmd) if it were executed. */
static void pk_call_with_string(buf *b, const char *mod, const char *name, const char *arg, int stack_global)
{
    put8(b, 0x80);
    put8(b, stack_global ? 4 : 2);
    if (stack_global) {
        put8(b, 0x8c);
        put8(b, (unsigned)strlen(mod));
        put_str(b, mod);
        put8(b, 0x8c);
        put8(b, (unsigned)strlen(name));
        put_str(b, name);
        put8(b, 0x93);
    } else
        pk_global(b, mod, name);
    pk_str(b, arg);
    put8(b, 0x85);
    put8(b, 'R');
    put8(b, '.');
}

static void test_code_execution(void)
{
    char marker[512], cmd[600], py[700];
    snprintf(marker, sizeof marker, "%s/pwned", tmp_dir);
    snprintf(cmd, sizeof cmd, "touch %s", marker);
    snprintf(py, sizeof py, "__import__('os').system('touch %s')", marker);
    static const struct {
        const char *mod, *name;
        int python_code;
    } calls[] = {
        {"os", "system", 0},         {"posix", "system", 0},
        {"builtins", "eval", 1},     {"builtins", "exec", 1},
        {"__builtin__", "eval", 1},  {"subprocess", "getoutput", 0},
        {"torch", "load", 0},        {"torch.storage", "_load_from_bytes", 0},
        {"collections", "deque", 0}, {"torch._utils", "_rebuild_qtensor", 0},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(calls); i++)
        for (int sg = 0; sg < 2; sg++) {
            buf b = {0};
            pk_call_with_string(&b, calls[i].mod, calls[i].name, calls[i].python_code ? py : cmd, sg);
            char needle[128], what[160];
            snprintf(needle, sizeof needle, "pickle global %s.%s is not allowed", calls[i].mod,
                     calls[i].name);
            snprintf(what, sizeof what, "%s.%s(...) via %s", calls[i].mod, calls[i].name,
                     sg ? "STACK_GLOBAL" : "GLOBAL");
            CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, needle, what);
            free(b.p);
        }
    /* the same through torch_open on a file, as the converter calls it */
    buf b = {0};
    pk_call_with_string(&b, "os", "system", cmd, 0);
    zentry e[1] = {{"evil/data.pkl", b.p, b.n}};
    zipfile z;
    zip_build(&z, e, 1, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/evil.pt", tmp_dir);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(z.b.p, 1, z.b.n, fp) != z.b.n) {
        fprintf(stderr, "FAIL cannot write %s\n", path);
        exit(1);
    }
    fclose(fp);
    st_file f;
    CHECK_REFUSED(torch_open(path, &f), DDPM_ERR_FORMAT, "os.system is not allowed", "evil.pt from disk");
    CHECK(f.n_tensors == 0 && f.buf == NULL, "a refused file leaves an empty st_file");
    /* files torch.save wrote for objects whose __reduce__ returns os.system / eval of a shell command that
     * would create $DDPM_PWNED_MARKER */
    setenv("DDPM_PWNED_MARKER", marker, 1);
    static const char *const evil[][2] = {{"torchfile/evil_system.pt", "posix.system"},
                                          {"torchfile/evil_eval.pt", "__builtin__.eval"},
                                          {"torchfile/evil_legacy.pt", "posix.system"}};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(evil); i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "%s is not allowed", evil[i][1]);
        CHECK_REFUSED(torch_open(test_fixture_path(evil[i][0]), &f), DDPM_ERR_FORMAT, needle, evil[i][0]);
    }
    CHECK(access(marker, F_OK) != 0, "nothing ran: %s does not exist", marker);
    printf("%s nothing ran: %s was not created\n", access(marker, F_OK) != 0 ? "ok  " : "FAIL", marker);
    unlink(path);
    unlink(marker);
    free(b.p);
    free(z.b.p);
}

/* A state dict {name: tensor} pickle with the given tensor arguments. */
static void pk_state_dict(buf *b, const char *storage_class, int64_t numel, int64_t offset, int ndim,
                          const int64_t *shape, const int64_t *stride)
{
    put8(b, 0x80);
    put8(b, 2);
    put8(b, '}');
    put8(b, '(');
    pk_str(b, "w");
    pk_tensor(b, storage_class, "0", numel, offset, ndim, shape, stride);
    put8(b, 'u');
    put8(b, '.');
}

static void test_hostile_tensors(void)
{
    buf b = {0};
    int64_t shape[4] = {2, 3}, stride[4] = {3, 1};
    /* the valid baseline: {"w": float32 (2, 3) at offset 10 of a 16-element storage} */
    for (int i = 0; i < 16; i++)
        storage_f32[i] = (float)i;
    pk_state_dict(&b, "FloatStorage", 16, 10, 2, shape, stride);
    st_file f;
    ddpm_result r = parse_archive(&b, (const uint8_t *)storage_f32, 16 * 4, 0, &f);
    CHECK(r == DDPM_OK, "crafted baseline: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        const st_tensor *t = st_find(&f, "w");
        float v[6] = {0};
        if (t)
            st_to_f32(t, v);
        CHECK(t && t->numel == 6 && v[0] == 10 && v[5] == 15, "crafted baseline reads elements 10..15");
        st_close(&f);
    }
    free(b.p);
    b = (buf){0};

#define TENSOR_CASE(cls, numel, offset, nd, want, needle, what, ...)                                         \
    do {                                                                                                     \
        int64_t sh_[4] = {0}, st_[4] = {0}, in_[8] = {__VA_ARGS__};                                          \
        for (int d_ = 0; d_ < (nd); d_++) {                                                                  \
            sh_[d_] = in_[d_];                                                                               \
            st_[d_] = in_[4 + d_];                                                                           \
        }                                                                                                    \
        buf b_ = {0};                                                                                        \
        pk_state_dict(&b_, cls, numel, offset, nd, sh_, st_);                                                \
        st_file f_;                                                                                          \
        CHECK_REFUSED(parse_archive(&b_, (const uint8_t *)storage_f32, 16 * 4, 0, &f_), want, needle, what); \
        free(b_.p);                                                                                          \
    } while (0)

    TENSOR_CASE("FloatStorage", 16, 11, 2, DDPM_ERR_FORMAT, "holds only 16",
                "a storage shorter than the tensor", 2, 3, 0, 0, 3, 1);
    TENSOR_CASE("FloatStorage", 16, 0, 2, DDPM_ERR_FORMAT, "holds only 16",
                "a tensor larger than its storage", 4, 5, 0, 0, 5, 1);
    TENSOR_CASE("FloatStorage", 32, 0, 2, DDPM_ERR_FORMAT, "claims 32 elements",
                "a storage claiming more elements than its entry holds", 2, 3, 0, 0, 3, 1);
    TENSOR_CASE("HalfStorage", 16, 0, 2, DDPM_ERR_FORMAT, "claims 16 elements",
                "a storage whose dtype does not match its size", 2, 3, 0, 0, 3, 1);
    TENSOR_CASE("FloatStorage", 16, 0, 2, DDPM_ERR_UNSUPPORTED, "not contiguous",
                "a transposed (strided) view", 2, 3, 0, 0, 1, 2);
    TENSOR_CASE("FloatStorage", 16, 0, 2, DDPM_ERR_UNSUPPORTED, "not contiguous", "a strided view with gaps",
                2, 3, 0, 0, 6, 1);
    TENSOR_CASE("FloatStorage", 16, 0, 2, DDPM_ERR_FORMAT, "overflows", "an absurd shape (2^40 x 2^40)",
                (int64_t)1 << 40, (int64_t)1 << 40, 0, 0, (int64_t)1 << 40, 1);
    TENSOR_CASE("FloatStorage", 16, 0, 1, DDPM_ERR_FORMAT, "holds only 16", "an absurd shape (2^62)",
                (int64_t)1 << 62, 0, 0, 0, 1);
    TENSOR_CASE("FloatStorage", 16, INT64_MAX, 1, DDPM_ERR_FORMAT, "holds only 16",
                "an offset near INT64_MAX", 2, 0, 0, 0, 1);
    TENSOR_CASE("FloatStorage", 16, -1, 1, DDPM_ERR_FORMAT, "negative storage offset", "a negative offset", 2,
                0, 0, 0, 1);
    TENSOR_CASE("FloatStorage", 16, 0, 2, DDPM_ERR_FORMAT, "non-negative ints", "a negative dimension", -2, 3,
                0, 0, 3, 1);
    {
        int64_t sh5[5] = {1, 1, 1, 2, 3}, st5[5] = {6, 6, 6, 3, 1};
        buf b5 = {0};
        put8(&b5, 0x80);
        put8(&b5, 2);
        put8(&b5, '}');
        pk_str(&b5, "w");
        pk_global(&b5, "torch._utils", "_rebuild_tensor_v2");
        put8(&b5, '(');
        put8(&b5, '(');
        pk_str(&b5, "storage");
        pk_global(&b5, "torch", "FloatStorage");
        pk_str(&b5, "0");
        pk_str(&b5, "cpu");
        pk_int(&b5, 64);
        put8(&b5, 't');
        put8(&b5, 'Q');
        pk_int(&b5, 0);
        pk_ints(&b5, 5, sh5);
        pk_ints(&b5, 5, st5);
        put8(&b5, 0x89);
        put8(&b5, 'N');
        put8(&b5, 't');
        put8(&b5, 'R');
        put8(&b5, 's');
        put8(&b5, '.');
        CHECK_REFUSED(parse_pickle(&b5), DDPM_ERR_FORMAT, "5 dimensions", "a 5-dimensional tensor");
        free(b5.p);
    }

    /* a storage the archive does not have, or claimed twice with different types */
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    put8(&b, '}');
    put8(&b, '(');
    pk_str(&b, "w");
    pk_tensor(&b, "FloatStorage", "7", 4, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    put8(&b, 'u');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "archive/data/7 is missing",
                  "a storage not in the archive");
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    put8(&b, '}');
    put8(&b, '(');
    pk_str(&b, "a");
    pk_tensor(&b, "FloatStorage", "0", 64, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    pk_str(&b, "b");
    pk_tensor(&b, "IntStorage", "0", 64, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    put8(&b, 'u');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "two different types",
                  "one storage claimed as two dtypes");
    free(b.p);

    /* int64 tensors are skipped and listed; a file of only those is refused */
    b = (buf){0};
    pk_state_dict(&b, "LongStorage", 32, 0, 2, shape, stride);
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_UNSUPPORTED, "w (I64)", "a checkpoint of int64 tensors only");
    free(b.p);
}

/* Each pickle is refused; `needle` is in the message. */
static void refuse_pickle(const uint8_t *p, size_t n, const char *needle, const char *what)
{
    buf b = {0};
    put(&b, p, n);
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, needle, what);
    free(b.p);
}
#define REFUSE_PICKLE(lit, needle, what) refuse_pickle((const uint8_t *)(lit), sizeof(lit) - 1, needle, what)

static void test_hostile_pickles(void)
{
    REFUSE_PICKLE("\x80\x02}\xff.", "unknown pickle opcode 0xff", "an unknown opcode");
    REFUSE_PICKLE("\x80\x02(cos\nsystem\nS'ls'\ni.", "os.system", "INST with a global");
    REFUSE_PICKLE("\x80\x02(X\x01\x00\x00\x00"
                  "ai.",
                  "", "INST");
    REFUSE_PICKLE("\x80\x02(N)o.", "OBJ", "OBJ");
    REFUSE_PICKLE("\x80\x02\x82\x01.", "EXT1", "EXT1 (the extension registry)");
    REFUSE_PICKLE("\x80\x02\x83\x01\x00.", "EXT2", "EXT2");
    REFUSE_PICKLE("\x80\x02\x84\x01\x00\x00\x00.", "EXT4", "EXT4");
    REFUSE_PICKLE("\x80\x02S'x'\nP.", "STRING", "protocol-0 text opcodes");
    REFUSE_PICKLE("\x80\x02X\x01\x00\x00\x00xP1\n.", "PERSID", "text PERSID");
    REFUSE_PICKLE("\x80\x06}.", "protocol 6", "an unknown protocol");
    REFUSE_PICKLE("\x80\x02}", "without STOP", "a pickle without STOP");
    REFUSE_PICKLE("\x80\x02X\xff\xff\xff\x7f", "runs past the end", "a string longer than the pickle");
    REFUSE_PICKLE("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "runs past the end", "a 2^64-byte string");
    REFUSE_PICKLE("\x80\x02J\x01\x00", "truncated", "an int cut short");
    REFUSE_PICKLE("\x80\x02.", "underflow", "STOP on an empty stack");
    REFUSE_PICKLE("\x80\x02t.", "no MARK", "TUPLE without MARK");
    REFUSE_PICKLE("\x80\x02}(\x85.", "underflow", "TUPLE1 across a MARK");
    REFUSE_PICKLE("\x80\x02]NNs.", "SETITEM on a list", "SETITEM on a list");
    REFUSE_PICKLE("\x80\x02}Na.", "APPEND to a dict", "APPEND to a dict");
    REFUSE_PICKLE("\x80\x02}(N.", "holds no tensors", "an open MARK at STOP");
    REFUSE_PICKLE("\x80\x02}(Nu.", "odd number", "SETITEMS with an odd count");
    REFUSE_PICKLE("\x80\x02r\xf0\xff\xff\xff.", "empty stack", "LONG_BINPUT on an empty stack");
    REFUSE_PICKLE("\x80\x02}r\xf0\xff\xff\xff.", "memo index 4294967280 out of order", "a huge memo index");
    REFUSE_PICKLE("\x80\x02}q\x05.", "memo index 5 out of order", "a memo index with a gap");
    REFUSE_PICKLE("\x80\x02j\x00\x00\x00\x01.", "never stored", "LONG_BINGET of an absent index");
    REFUSE_PICKLE("\x80\x02}h\x00.", "never stored", "BINGET of an absent index");
    REFUSE_PICKLE("\x80\x02"
                  "ccollections\nOrderedDict\nX\x01\x00\x00\x00"
                  "a\x85R.",
                  "with arguments", "OrderedDict with arguments");
    REFUSE_PICKLE("\x80\x02"
                  "ctorch\nFloatStorage\n)R.",
                  "REDUCE of torch.FloatStorage", "calling a storage class");
    REFUSE_PICKLE("\x80\x02N)R.", "call of a None", "calling None");
    REFUSE_PICKLE("\x80\x02"
                  "ccollections\nOrderedDict\nNR.",
                  "not a tuple", "REDUCE with non-tuple arguments");
    REFUSE_PICKLE("\x80\x02]}b.", "BUILD on a list", "BUILD on a list");
    REFUSE_PICKLE("\x80\x02X\x03\x00\x00\x00"
                  "abcQ.",
                  "persistent id", "a string persistent id");
    REFUSE_PICKLE("\x80\x02(X\x07\x00\x00\x00storageccollections\nOrderedDict\nX\x01\x00\x00\x00"
                  "0X\x03\x00\x00\x00"
                  "cpuK\x01tQ.",
                  "not a storage class", "a persistent id with a non-storage type");
    REFUSE_PICKLE("\x80\x02"
                  "ctorch._utils\n_rebuild_tensor_v2\n(NNNNNNt\x52.",
                  "not (storage", "_rebuild_tensor_v2 of Nones");
    REFUSE_PICKLE("\x80\x02"
                  "ctorch._utils\n_rebuild_parameter\n(NNNt\x52.",
                  "takes (tensor", "_rebuild_parameter of None");
    REFUSE_PICKLE("\x80\x02"
                  "ctorch\nFloatStorage\n.",
                  "holds no tensors", "a pickle of a bare global");
    REFUSE_PICKLE("\x80\x02}.", "holds no tensors", "an empty state dict");
    REFUSE_PICKLE("\x80\x02"
                  "c\xff\n\x01\n.",
                  "pickle global ?.? is not allowed", "a binary global name");
    REFUSE_PICKLE("\x80\x02"
                  "cos\nsystem",
                  "newline", "GLOBAL without a newline");

    /* a top-level tensor; a tensor under a None key; a name two paths share; a non-UTF-8 key */
    storage_f32[0] = 1;
    buf b = {0};
    put8(&b, 0x80);
    put8(&b, 2);
    pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "single tensor", "a top-level tensor");
    const struct {
        const char *k1, *k2;
        const char *needle, *what;
    } keys[] = {{"a.b", NULL, "two tensors are named \"a.b\"", "two paths naming one tensor"},
                {"\xff", "x", "not UTF-8", "a key that is not UTF-8"},
                {"", "x", "is empty", "an empty key"},
                {NULL, "x", "None key", "a None key"}};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(keys); i++) {
        b.n = 0;
        put8(&b, 0x80);
        put8(&b, 2);
        put8(&b, '}');
        if (keys[i].k1)
            pk_str(&b, keys[i].k1);
        else
            put8(&b, 'N');
        pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
        put8(&b, 's');
        if (keys[i].k2 == NULL) { /* {"a.b": t, "a": {"b": t}} */
            pk_str(&b, "a");
            put8(&b, '}');
            pk_str(&b, "b");
            pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
            put8(&b, 's');
            put8(&b, 's');
        }
        put8(&b, '.');
        CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, keys[i].needle, keys[i].what);
    }
    /* a name longer than 255 bytes */
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    put8(&b, '}');
    char longkey[201];
    memset(longkey, 'k', 200);
    longkey[200] = 0;
    pk_str(&b, longkey);
    put8(&b, '}');
    pk_str(&b, longkey);
    pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
    put8(&b, 's');
    put8(&b, 's');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "longer than 255", "a 401-byte tensor name");

    /* stack bombs: 2^19 pushes; 2^17 MARKs; 100 nested lists around a tensor; a list holding itself;
     * 40 levels of a list holding the level below twice (2^40 paths) */
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    for (int i = 0; i < (1 << 19); i++)
        put8(&b, 'N');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "stack deeper", "2^19 stack entries");
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    for (int i = 0; i < (1 << 17); i++)
        put8(&b, '(');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "nested MARKs", "2^17 MARKs");
    b.n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    for (int i = 0; i < 100; i++)
        put8(&b, ']');
    pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
    for (int i = 0; i < 100; i++)
        put8(&b, 'a');
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "nested deeper than 32", "a tensor 100 lists deep");
    b.n = 0;
    put(&b,
        "\x80\x02]q\x00h\x00"
        "a",
        8); /* L = []; L.append(L) */
    pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
    put_str(&b, "a.");
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "nested deeper than 32", "a list that holds itself");
    b.n = 0;
    put_str(&b, "\x80\x02]");
    pk_simple_tensor(&b, 64, 1, (int64_t[]){4});
    put8(&b, 'a');
    for (int i = 0; i < 30; i++) { /* L_{i+1} = [L_i, L_i] */
        put8(&b, 'r');
        put_le(&b, (uint64_t)i, 4);
        put8(&b, ']');
        put8(&b, 'j');
        put_le(&b, (uint64_t)i, 4);
        put8(&b, 'a');
        put8(&b, 'j');
        put_le(&b, (uint64_t)i, 4);
        put8(&b, 'a');
    }
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "shared more than", "2^30 paths through shared lists");
    b.n = 0;
    put_str(&b, "\x80\x02}");
    for (int i = 0; i <= (1 << 22); i++)
        put8(&b, 0x94); /* MEMOIZE */
    put8(&b, '.');
    CHECK_REFUSED(parse_pickle(&b), DDPM_ERR_FORMAT, "memo entries", "2^22 + 1 memo entries");
    free(b.p);
}

/* Opcodes and callables torch 1.13 does not write but others may: each value lands where Python puts it. */
static void test_rare_opcodes(void)
{
    for (int i = 0; i < 64; i++)
        storage_f32[i] = (float)i;
    buf b = {0};
    put_str(&b, "\x80\x04\x95");
    put_le(&b, 0, 8); /* FRAME (a length hint) */
    put_str(&b, "\x8c\x0b"
                "collections\x94\x8c\x0b"
                "OrderedDict\x94\x93"); /* STACK_GLOBAL, MEMOIZE */
    put_str(&b, ")\x81");               /* NEWOBJ: OrderedDict() */
    pk_str(&b, "v1");
    pk_global(&b, "torch._utils", "_rebuild_tensor"); /* (storage, offset, size, stride) */
    put(&b, "((", 2);
    pk_str(&b, "storage");
    pk_global(&b, "torch", "FloatStorage");
    pk_str(&b, "0");
    pk_str(&b, "cpu");
    pk_int(&b, 64);
    put(&b, "tQ", 2);
    pk_int(&b, 3);
    put_str(&b, "K\x02\x85K\x01\x85tR"); /* size (2,), stride (1,) */
    put_str(&b, "s");
    put(&b,
        "\x8d\x02\x00\x00\x00\x00\x00\x00\x00"
        "ps",
        11); /* BINUNICODE8 "ps" */
    pk_global(&b, "torch._utils", "_rebuild_parameter_with_state");
    put8(&b, '(');
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    put(&b, "((", 2);
    pk_str(&b, "storage");
    pk_global(&b, "torch", "FloatStorage");
    pk_str(&b, "0");
    pk_str(&b, "cpu");
    pk_int(&b, 64);
    put(&b, "tQ", 2);
    pk_int(&b, 10);
    put_str(&b, "K\x01K\x02\x86K\x02K\x01\x86\x88}N"); /* size (1, 2), stride (2, 1), True, {}, None */
    put_str(&b, "tR\x88}}tR"); /* 7 arguments (metadata None), then (t, True, {}, {}) */
    put_str(&b, "s");
    pk_str(&b, "plain"); /* plain data, left out: float, negative LONG1, bytes, Python 2 str, a DUP, a POP */
    put8(&b, '(');
    put8(&b, 'G');
    put(&b, "\x3f\xf8\x00\x00\x00\x00\x00\x00", 8); /* 1.5 */
    put(&b, "\x8a\x02\x00\x80", 4);                 /* -32768 */
    put(&b,
        "C\x03"
        "abc",
        5);
    put_str(&b, "U\x02hi");
    put_str(&b, "N2000");
    put_str(&b, "(NN1l");
    put_str(&b, "s");
    put_str(&b, "\x8a\x01\xfe"); /* key -2 */
    put_str(&b, "](]");
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    put(&b, "((", 2);
    pk_str(&b, "storage");
    pk_global(&b, "torch", "HalfStorage");
    pk_str(&b, "1");
    pk_str(&b, "cpu");
    pk_int(&b, 8);
    put(&b, "tQ", 2);
    pk_int(&b, 0);
    put_str(&b, "K\x04\x85K\x01\x85\x89NtR"); /* size (4,), stride (1,) */
    put_str(&b, "\x94"
                "e"); /* APPENDS: [[], t] */
    put8(&b, 's');
    put(&b,
        "(X\x01\x00\x00\x00"
        "d}d",
        9); /* DICT {"d": {}}, then BINGET, MEMOIZE and two POPs */
    put_str(&b, "h\x01\x94"
                "00.");
    static const uint16_t half[8] = {0x3c00, 0x4000, 0xc200, 0x7bff, 0, 0, 0, 0};
    zentry e[3] = {{"archive/data.pkl", b.p, b.n},
                   {"archive/data/0", (const uint8_t *)storage_f32, sizeof storage_f32},
                   {"archive/data/1", (const uint8_t *)half, sizeof half}};
    zipfile z;
    zip_build(&z, e, 3, 0);
    st_file f;
    ddpm_result r = torch_parse(z.b.p, z.b.n, "rare.pt", &f);
    CHECK(r == DDPM_OK, "rare opcodes: %s", ddpm_last_error());
    if (r != DDPM_OK) {
        free(b.p);
        return;
    }
    const st_tensor *v1 = st_find(&f, "v1"), *ps = st_find(&f, "ps"), *neg = st_find(&f, "-2.1");
    float a[4] = {0}, c[4] = {0}, d[4] = {0};
    if (v1 && v1->numel == 2)
        st_to_f32(v1, a);
    if (ps && ps->numel == 2)
        st_to_f32(ps, c);
    if (neg && neg->numel == 4)
        st_to_f32(neg, d);
    CHECK(f.n_tensors == 3, "rare opcodes: 3 tensors, got %d", f.n_tensors);
    CHECK(v1 && v1->ndim == 1 && a[0] == 3 && a[1] == 4, "_rebuild_tensor (v1) at offset 3");
    CHECK(ps && ps->ndim == 2 && ps->shape[1] == 2 && c[0] == 10 && c[1] == 11,
          "_rebuild_parameter_with_state of a (1, 2) view at offset 10");
    CHECK(neg && neg->dtype == ST_F16 && d[0] == 1 && d[1] == 2 && d[2] == -3 && d[3] == 65504,
          "a half tensor in a list under the int key -2");
    printf("%s rare opcodes (FRAME, STACK_GLOBAL, NEWOBJ, MEMOIZE, DICT, APPENDS, LONG1, ...): %d tensors\n",
           f.n_tensors == 3 ? "ok  " : "FAIL", f.n_tensors);
    st_close(&f);
    free(b.p);
}

/* ---- hostile archives ------------------------------------------------------------------------- */

/* A valid crafted checkpoint: {"w": float32 (4,) in storage "0"}. */
static void valid_entries(buf *pkl, zentry e[3])
{
    pkl->n = 0;
    put8(pkl, 0x80);
    put8(pkl, 2);
    put8(pkl, '}');
    pk_str(pkl, "w");
    pk_simple_tensor(pkl, 4, 1, (int64_t[]){4});
    put8(pkl, 's');
    put8(pkl, '.');
    static const float w[4] = {1, 2, 3, 4};
    zentry v[3] = {{"archive/data.pkl", pkl->p, pkl->n},
                   {"archive/data/0", (const uint8_t *)w, sizeof w},
                   {"archive/version", (const uint8_t *)"3\n", 2}};
    memcpy(e, v, sizeof v);
}

static ddpm_result parse_zip(const zipfile *z)
{
    st_file f;
    ddpm_result r = torch_parse(dup_bytes(z->b.p, z->b.n), z->b.n, "crafted.pt", &f);
    if (r == DDPM_OK)
        st_close(&f);
    return r;
}

static void test_hostile_archives(void)
{
    buf pkl = {0};
    zentry e[3];
    zipfile z;
    valid_entries(&pkl, e);
    zip_build(&z, e, 3, 0);
    CHECK(parse_zip(&z) == DDPM_OK, "crafted archive: %s", ddpm_last_error());
    free(z.b.p);
    zip_build(&z, e, 3, 1);
    CHECK(parse_zip(&z) == DDPM_OK, "crafted zip64 archive: %s", ddpm_last_error());
    free(z.b.p);

    /* every truncation of a real file and of a zip64 one */
    size_t size;
    uint8_t *data = read_fixture("torchfile/module.pt", &size);
    int refused = 0;
    for (size_t n = 0; n < size; n++) {
        st_file f;
        ddpm_result r = torch_parse(dup_bytes(data, n), n, "truncated", &f);
        refused += r != DDPM_OK && good_message();
        if (r == DDPM_OK)
            st_close(&f);
    }
    CHECK(refused == (int)size, "every truncation of module.pt is refused (%d of %zu)", refused, size);
    printf("%s refused all %zu truncations of module.pt\n", refused == (int)size ? "ok  " : "FAIL", size);
    CHECK_REFUSED(torch_parse(dup_bytes(data, size - 1), size - 1, "module.pt", &(st_file){0}),
                  DDPM_ERR_FORMAT, "end-of-central-directory", "a zip cut by one byte");
    free(data);
    zip_build(&z, e, 3, 1);
    refused = 0;
    for (size_t n = 0; n < z.b.n; n++) {
        st_file f;
        ddpm_result r = torch_parse(dup_bytes(z.b.p, n), n, "truncated", &f);
        refused += r != DDPM_OK;
        if (r == DDPM_OK)
            st_close(&f);
    }
    CHECK(refused == (int)z.b.n, "every truncation of a zip64 archive is refused (%d of %zu)", refused,
          z.b.n);
    free(z.b.p);

    /* one field of the central directory, a local header or an end record changed at a time */
    static const struct {
        int entry;     /* -1: the end record */
        int local;     /* patch the local header instead of the directory entry */
        int at, bytes; /* field offset and width */
        uint64_t value;
        ddpm_result want;
        const char *needle, *what;
    } patches[] = {
        {1, 0, 42, 4, 0x7fffffff, DDPM_ERR_FORMAT, "outside the archive", "an entry pointing past the file"},
        {1, 0, 42, 4, 0xfffffff0, DDPM_ERR_FORMAT, "outside the archive",
         "an entry pointing far past the file"},
        {1, 0, 42, 4, 0, DDPM_ERR_FORMAT, "disagrees", "an entry pointing at another's header"},
        {0, 0, 20, 8, 200 | (uint64_t)200 << 32, DDPM_ERR_FORMAT, "overlap", "an entry overlapping the next"},
        {2, 0, 20, 8, 100000 | (uint64_t)100000 << 32, DDPM_ERR_FORMAT, "run past",
         "an entry running into the directory"},
        {1, 0, 24, 4, 7, DDPM_ERR_FORMAT, "sizes differ", "stored sizes that differ"},
        {1, 0, 10, 2, 8, DDPM_ERR_UNSUPPORTED, "compressed (deflate)", "a deflated entry"},
        {1, 0, 10, 2, 12, DDPM_ERR_UNSUPPORTED, "method 12", "a bzip2 entry"},
        {1, 0, 8, 2, 1, DDPM_ERR_UNSUPPORTED, "encrypted", "an encrypted entry"},
        {1, 0, 16, 4, 0x12345678, DDPM_ERR_FORMAT, "disagrees", "a CRC that differs from the local header"},
        {1, 0, 28, 2, 60000, DDPM_ERR_FORMAT, "truncated", "a name running past the directory"},
        {1, 0, 34, 2, 1, DDPM_ERR_UNSUPPORTED, "another disk", "an entry on another disk"},
        {1, 1, 0, 4, 0, DDPM_ERR_FORMAT, "no local header", "a missing local header"},
        {1, 1, 28, 2, 60000, DDPM_ERR_FORMAT, "past the data area", "a local extra field past the data"},
        {0, 0, 0, 4, 0, DDPM_ERR_FORMAT, "central directory entry", "a bad directory signature"},
        {-1, 0, 8, 4, 60000 | 60000u << 16, DDPM_ERR_FORMAT, "entries in a", "an absurd entry count"},
        {-1, 0, 16, 4, 0xfffffff0, DDPM_ERR_FORMAT, "outside the file", "a directory offset past the file"},
        {-1, 0, 12, 4, 0xfffffff0, DDPM_ERR_FORMAT, "outside the file", "a directory size past the file"},
        {-1, 0, 4, 2, 1, DDPM_ERR_UNSUPPORTED, "multi-disk", "a split archive"},
        {-1, 0, 20, 2, 5, DDPM_ERR_FORMAT, "end-of-central-directory", "a comment running past the file"},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(patches); i++) {
        zip_build(&z, e, 3, 0);
        size_t at = patches[i].entry < 0 ? z.eocd_at
                    : patches[i].local   ? z.local_at[patches[i].entry]
                                         : z.cd_at[patches[i].entry];
        store_le(z.b.p + at + patches[i].at, patches[i].value, patches[i].bytes);
        if (patches[i].entry >= 0 && !patches[i].local && patches[i].at == 20 && patches[i].bytes == 8)
            memcpy(z.b.p + z.local_at[patches[i].entry] + 18, z.b.p + at + 20, 8); /* sizes in both headers */
        CHECK_REFUSED(parse_zip(&z), patches[i].want, patches[i].needle, patches[i].what);
        free(z.b.p);
    }
    /* the same in a zip64 archive: its extra fields and end records */
    static const struct {
        int where; /* 0: the zip64 extra field of entry 1 (after the name), 1: the zip64 end record */
        int at, bytes;
        uint64_t value;
        const char *needle, *what;
    } patches64[] = {
        {0, 20, 8, (uint64_t)1 << 62, "outside the archive", "a zip64 offset past the file"},
        {0, 4, 8, 1000, "sizes differ", "zip64 sizes that differ"},
        {0, 4, 16, 0, "", "zip64 sizes of zero"},
        {0, 2, 2, 8, "too short", "a short zip64 field"},
        {0, 2, 2, 200, "past its end", "a zip64 field longer than the extra data"},
        {1, 48, 8, (uint64_t)1 << 62, "outside the file", "a zip64 directory offset past the file"},
        {1, 32, 8, (uint64_t)1 << 40, "", "a zip64 entry count of 2^40"},
        {1, 0, 4, 0, "zip64 end record", "a bad zip64 end signature"},
        {1, 4, 8, (uint64_t)-1, "zip64 end record", "an absurd zip64 record size"},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(patches64); i++) {
        zip_build(&z, e, 3, 1);
        size_t at = patches64[i].where == 0 ? z.cd_at[1] + 46 + strlen(e[1].name) : z.eocd_at - 20 - 56;
        store_le(z.b.p + at + patches64[i].at, patches64[i].value, patches64[i].bytes);
        CHECK_REFUSED(parse_zip(&z), patches64[i].where == 0 && i == 2 ? DDPM_ERR_FORMAT : DDPM_ERR_FORMAT,
                      patches64[i].needle, patches64[i].what);
        free(z.b.p);
    }

    /* contents: a corrupt storage (CRC), a second data.pkl, none, duplicate names, big-endian */
    zip_build(&z, e, 3, 0);
    z.b.p[z.local_at[1] + 30 + strlen(e[1].name)] ^= 1;
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_FORMAT, "corrupt (CRC-32", "a storage whose bytes changed");
    free(z.b.p);
    zentry e4[4];
    memcpy(e4, e, sizeof e);
    e4[3] = e[0];
    strcpy(e4[3].name, "other/data.pkl");
    zip_build(&z, e4, 4, 0);
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_FORMAT, "more than one data.pkl", "two data.pkl entries");
    free(z.b.p);
    e4[3] = e[1];
    zip_build(&z, e4, 4, 0);
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_FORMAT, "duplicate zip entry", "two entries of one name");
    free(z.b.p);
    e4[3] = (zentry){"archive/byteorder", (const uint8_t *)"big", 3};
    zip_build(&z, e4, 4, 0);
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_UNSUPPORTED, "big-endian", "a big-endian checkpoint");
    free(z.b.p);
    e4[3] = (zentry){"archive/byteorder", (const uint8_t *)"little", 6};
    zip_build(&z, e4, 4, 0);
    CHECK(parse_zip(&z) == DDPM_OK, "byteorder \"little\" is read: %s", ddpm_last_error());
    free(z.b.p);
    zip_build(&z, e + 1, 2, 0);
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_FORMAT, "without <archive>/data.pkl",
                  "an archive without data.pkl");
    free(z.b.p);
    zip_build(&z, e, 0, 0);
    CHECK_REFUSED(parse_zip(&z), DDPM_ERR_FORMAT, "without <archive>/data.pkl", "an empty zip");
    free(z.b.p);
    CHECK_REFUSED(torch_parse(dup_bytes((const uint8_t *)"PK\x03\x04", 4), 4, "tiny", &(st_file){0}),
                  DDPM_ERR_FORMAT, "too short", "a 4-byte file");
    CHECK_REFUSED(torch_parse(NULL, 0, "empty", &(st_file){0}), DDPM_ERR_FORMAT, "not a PyTorch",
                  "an empty file");
    free(pkl.p);
}

/* ---- the legacy format ------------------------------------------------------------------------ */

enum { L_OK, L_COUNT, L_SHORT, L_TWICE, L_UNUSED, L_NO_DATA, L_VIEW, L_BIG, L_PROTO, L_PERSID5 };

/* A legacy checkpoint {"w": float32 (4,)}: magic, protocol, sys_info, the object, the keys, the storage. */
static void legacy_file(buf *b, int variant)
{
    static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                    0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
    static const float w[4] = {1.5f, -2, 3, 4};
    b->n = 0;
    put(b, magic, sizeof magic);
    put(b, "\x80\x02M", 3);
    put_le(b, variant == L_PROTO ? 1000 : 1001, 2);
    put8(b, '.');
    put(b, "\x80\x02}(", 4);
    pk_str(b, "protocol_version");
    put(b, "M\xe9\x03", 3);
    pk_str(b, "little_endian");
    put8(b, variant == L_BIG ? 0x89 : 0x88);
    put(b, "u.", 2);
    put(b, "\x80\x02}", 3);
    pk_str(b, "w");
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    put(b, "((", 2);
    pk_str(b, "storage");
    pk_global(b, "torch", "FloatStorage");
    pk_str(b, "94123");
    pk_str(b, "cpu");
    pk_int(b, 4);
    if (variant == L_VIEW)
        put(b,
            "X\x01\x00\x00\x00"
            "0K\x00K\x04\x87",
            11);
    else if (variant != L_PERSID5)
        put8(b, 'N');
    put(b, "tQ", 2);
    pk_int(b, 0);
    pk_ints(b, 1, (int64_t[]){4});
    pk_ints(b, 1, (int64_t[]){1});
    put8(b, 0x89);
    pk_global(b, "collections", "OrderedDict");
    put(b, ")Rt", 3);
    put(b, "Rs.", 3);
    put(b, "\x80\x02](", 4); /* the keys */
    if (variant == L_UNUSED)
        pk_str(b, "777");
    if (variant != L_NO_DATA)
        pk_str(b, "94123");
    if (variant == L_TWICE)
        pk_str(b, "94123");
    put(b, "e.", 2);
    put_le(b, variant == L_COUNT ? 5 : 4, 8);
    put(b, w, variant == L_SHORT ? 15 : 16);
    if (variant == L_TWICE) {
        put_le(b, 4, 8);
        put(b, w, 16);
    }
}

static void test_legacy(void)
{
    buf b = {0};
    st_file f;
    legacy_file(&b, L_OK);
    ddpm_result r = torch_parse(dup_bytes(b.p, b.n), b.n, "legacy", &f);
    CHECK(r == DDPM_OK, "crafted legacy file: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        const st_tensor *t = st_find(&f, "w");
        float v[4] = {0};
        if (t && t->numel == 4)
            st_to_f32(t, v);
        CHECK(t && v[0] == 1.5f && v[3] == 4, "crafted legacy file reads w");
        st_close(&f);
    }
    static const struct {
        int variant;
        ddpm_result want;
        const char *needle, *what;
    } cases[] = {
        {L_COUNT, DDPM_ERR_FORMAT, "wrong element count", "legacy: a storage with the wrong element count"},
        {L_SHORT, DDPM_ERR_FORMAT, "truncated", "legacy: a storage cut short"},
        {L_TWICE, DDPM_ERR_FORMAT, "listed twice", "legacy: a storage key listed twice"},
        {L_UNUSED, DDPM_ERR_FORMAT, "not used by any tensor", "legacy: a key no tensor uses"},
        {L_NO_DATA, DDPM_ERR_FORMAT, "has no data", "legacy: a storage without data"},
        {L_VIEW, DDPM_ERR_UNSUPPORTED, "storage views", "legacy: a storage view"},
        {L_BIG, DDPM_ERR_UNSUPPORTED, "big-endian", "legacy: a big-endian file"},
        {L_PROTO, DDPM_ERR_UNSUPPORTED, "protocol version", "legacy: protocol version 1000"},
        {L_PERSID5, DDPM_ERR_FORMAT, "persistent id", "legacy: a zip-style persistent id"},
    };
    for (size_t i = 0; i < DDPM_ARRAY_LEN(cases); i++) {
        legacy_file(&b, cases[i].variant);
        CHECK_REFUSED(torch_parse(dup_bytes(b.p, b.n), b.n, "legacy", &f), cases[i].want, cases[i].needle,
                      cases[i].what);
    }
    free(b.p);

    /* every truncation of a real legacy file */
    size_t size;
    uint8_t *data = read_fixture("torchfile/legacy.pt", &size);
    int refused = 0;
    for (size_t n = 0; n < size; n++) {
        ddpm_result rr = torch_parse(dup_bytes(data, n), n, "truncated", &f);
        refused += rr != DDPM_OK && good_message();
        if (rr == DDPM_OK)
            st_close(&f);
    }
    CHECK(refused == (int)size, "every truncation of legacy.pt is refused (%d of %zu)", refused, size);
    printf("%s refused all %zu truncations of legacy.pt\n", refused == (int)size ? "ok  " : "FAIL", size);
    free(data);
}

/* ---- mutations -------------------------------------------------------------------------------- */

static uint64_t mix_state = 0x243f6a8885a308d3u;
static uint64_t next_u64(void)
{
    uint64_t z = (mix_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Every tensor of an accepted file lies inside the file. */
static int inside(const st_file *f)
{
    static const int sizes[] = {4, 2, 2};
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->data < f->buf || (size_t)(t->data - f->buf) > f->size ||
            (uint64_t)t->numel * (uint64_t)sizes[t->dtype] > f->size - (size_t)(t->data - f->buf))
            return 0;
    }
    return 1;
}

/* Random byte changes to the pickle of a real file (re-zipped with correct CRCs, so the unpickler sees
 * them) and to the whole file: each is read or refused with a one-line message, never out of bounds. */
static void test_mutations(void)
{
    size_t size;
    uint8_t *data = read_fixture("torchfile/ddim.ckpt", &size);
    zentry e[64];
    int n = zip_entries(data, size, e, 64);
    int pkl = -1;
    for (int i = 0; i < n; i++)
        if (strstr(e[i].name, "/data.pkl"))
            pkl = i;
    CHECK(pkl >= 0, "ddim.ckpt has a data.pkl");
    if (pkl < 0)
        return;
    uint8_t *orig = dup_bytes(e[pkl].data, e[pkl].size), *mut = dup_bytes(orig, e[pkl].size);
    e[pkl].data = mut;
    int ok_count = 0, refused = 0, bad = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(mut, orig, e[pkl].size);
        int flips = 1 + (int)(next_u64() % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = next_u64() % e[pkl].size;
            uint64_t r = next_u64();
            mut[at] = (r & 1) ? (uint8_t)(r >> 8) : (uint8_t)(mut[at] + (int)((r >> 8) % 5) - 2);
        }
        zipfile z;
        zip_build(&z, e, n, (int)(iter & 1));
        st_file f;
        ddpm_result r = torch_parse(z.b.p, z.b.n, "mutated", &f);
        if (r == DDPM_OK) {
            ok_count++;
            bad += !inside(&f);
            st_close(&f);
        } else {
            refused++;
            bad += !good_message();
        }
    }
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t *m = dup_bytes(data, size);
        int flips = 1 + (int)(next_u64() % 3);
        for (int k = 0; k < flips; k++)
            m[next_u64() % size] = (uint8_t)next_u64();
        st_file f;
        ddpm_result r = torch_parse(m, size, "mutated", &f);
        if (r == DDPM_OK) {
            ok_count++;
            bad += !inside(&f);
            st_close(&f);
        } else {
            refused++;
            bad += !good_message();
        }
    }
    free(data);
    data = read_fixture("torchfile/legacy_ddim.ckpt", &size); /* no CRC: changes reach the unpickler */
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t *m = dup_bytes(data, size);
        int flips = 1 + (int)(next_u64() % 3);
        for (int k = 0; k < flips; k++) {
            size_t at = next_u64() % size;
            uint64_t rnd = next_u64();
            m[at] = (rnd & 1) ? (uint8_t)(rnd >> 8) : (uint8_t)(m[at] + (int)((rnd >> 8) % 5) - 2);
        }
        st_file f;
        ddpm_result r = torch_parse(m, size, "mutated", &f);
        if (r == DDPM_OK) {
            ok_count++;
            bad += !inside(&f);
            st_close(&f);
        } else {
            refused++;
            bad += !good_message();
        }
    }
    CHECK(bad == 0, "mutations: %d results out of bounds or without a one-line message", bad);
    printf("%s 9000 mutations of ddim.ckpt and legacy_ddim.ckpt: %d read, %d refused, %d bad\n",
           bad ? "FAIL" : "ok  ", ok_count, refused, bad);
    free(orig);
    free(mut);
    free(data);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/ddpm_test_torchfile_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "FAIL cannot create a temporary directory\n");
        return 1;
    }
    test_real_files();
    test_code_execution();
    test_hostile_tensors();
    test_hostile_pickles();
    test_rare_opcodes();
    test_hostile_archives();
    test_legacy();
    test_mutations();
    rmdir(tmp_dir);
    return test_summary("torchfile");
}
