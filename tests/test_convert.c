/* test_convert.c: ddpm-convert's engine against PyTorch: every layout of tests/torch_ref/convert.py
 * (diffusers folders, old attention names, the original DDPM port; F32/F16/BF16) converted, run on the
 * CPU backend and compared with torch's output; key mapping, schedules, --inspect and hostile inputs. */
#include "convert.h"
#include "cpu/cpu.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* fp32 CPU forward against torch's float64 forward of the same stored weights (as test_unet) */
#define CONV_ATOL 1e-5f
#define CONV_RTOL 1e-4f

static char tmpdir[256];

static const char *fx(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s", test_fixture_path(rel));
    return buf[k];
}

static const char *tmp(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* The model's U-Net on x, t (B = 2) against want. Returns the max abs error (-1 on failure). */
static float forward_check(const char *what, const ddpm_model *m, const float *x, const float *t,
                           const float *want, int64_t n_out, float atol, float rtol)
{
    float *got = malloc((size_t)n_out * sizeof(float));
    ddpm_result r = cpu_unet_forward(&m->graph, (const float *const *)m->weights, 2, x, t, got);
    CHECK(r == DDPM_OK, "%s: forward: %s", what, ddpm_last_error());
    float worst = -1;
    if (r == DDPM_OK) {
        test_close(what, got, want, n_out, atol, rtol);
        worst = 0;
        for (int64_t i = 0; i < n_out; i++) {
            float d = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i];
            worst = d > worst ? d : worst;
        }
    }
    free(got);
    return worst;
}

typedef struct layout {
    const char *name;      /* out_<name> in convert_io.safetensors */
    const char *in;        /* under fixtures/convert */
    const char *config;    /* --config under fixtures/convert, or NULL */
    const char *scheduler; /* "ddpm" (google/ddpm-*), "other" (cifar_flat's) or "default" */
    const char *x;         /* x_cifar / x_celeba */
    int f16_exact;         /* stored F16: an F16 output is lossless */
} layout;

static const layout layouts[] = {
    {"cifar_pipeline", "convert/cifar_pipeline", NULL, "ddpm", "x_cifar", 0},
    {"cifar_flat", "convert/cifar_flat", NULL, "other", "x_cifar", 1},
    {"cifar_old_attn", "convert/cifar_old_attn.safetensors", "convert/cifar_pipeline/unet/config.json",
     "default", "x_cifar", 1},
    {"cifar_orig", "convert/cifar_orig.ckpt", "convert/cifar_pipeline/unet/config.json", "default", "x_cifar",
     0},
    {"cifar_orig_legacy_f16", "convert/cifar_orig_legacy_f16.ckpt", "convert/cifar_pipeline/unet/config.json",
     "default", "x_cifar", 1},
    {"celeba_pipeline", "convert/celeba_pipeline/unet", NULL, "ddpm", "x_celeba", 1},
    {"celeba_orig_bf16", "convert/celeba_orig_bf16.pt", "convert/celeba_pipeline/unet/config.json", "default",
     "x_celeba", 0},
    {"celeba_old_attn_bf16", "convert/celeba_old_attn_bf16.safetensors",
     "convert/celeba_pipeline/unet/config.json", "default", "x_celeba", 0},
};

static void check_schedule(const char *what, const ddpm_schedule_config *s, const char *kind)
{
    if (strcmp(kind, "other") == 0)
        CHECK(s->beta_schedule == BETA_SQUAREDCOS_CAP_V2 && s->num_train_timesteps == 500 &&
                  s->variance_type == VAR_FIXED_LARGE && !s->clip_sample && s->prediction_type == PRED_V,
              "%s: the folder's scheduler_config.json (cosine, T 500, fixed_large, no clip, v) is adopted",
              what);
    else /* google/ddpm-*'s scheduler and the defaults without one are the same DDPM schedule */
        CHECK(s->beta_schedule == BETA_LINEAR && s->beta_start == 1e-4 && s->beta_end == 0.02 &&
                  s->num_train_timesteps == 1000 && s->variance_type == VAR_FIXED_SMALL && s->clip_sample &&
                  s->prediction_type == PRED_EPSILON,
              "%s: linear 1e-4 .. 0.02, T 1000, fixed_small, clip, epsilon", what);
}

static float test_layout(const st_file *io, const layout *L)
{
    char what[128], key[64];
    convert_opts o = {0};
    if (L->config)
        o.config = fx(L->config);
    ddpm_model *m = NULL;
    convert_report rep;
    ddpm_result r = convert_load(fx(L->in), &o, &m, &rep);
    CHECK(r == DDPM_OK, "%s: convert: %s", L->name, ddpm_last_error());
    if (r != DDPM_OK)
        return -1;
    printf("  %s: %s, %d tensors (F32 %d, F16 %d, BF16 %d), %d renamed; scheduler %s\n", L->name, rep.naming,
           rep.n_tensors, rep.dtypes[ST_F32], rep.dtypes[ST_F16], rep.dtypes[ST_BF16], rep.n_renamed,
           rep.scheduler);
    CHECK(strcmp(L->scheduler, "default") != 0 || strstr(rep.scheduler, "defaults") != NULL,
          "%s: no scheduler file: the report says defaults", L->name);
    check_schedule(L->name, &m->schedule, L->scheduler);
    CHECK(strstr(L->name, "orig") == NULL || strstr(rep.naming, "original") != NULL, "%s: naming %s", L->name,
          rep.naming);
    CHECK(strstr(L->name, "old_attn") == NULL || strstr(rep.naming, "old attention") != NULL, "%s: naming %s",
          L->name, rep.naming);

    int64_t nx, nt, nout;
    float *x = test_tensor(io, L->x, &nx), *t = test_tensor(io, "t", &nt);
    snprintf(key, sizeof key, "out_%s", L->name);
    float *want = test_tensor(io, key, &nout);
    float worst = -1;
    int shapes_ok = nt == 2 && nx == 2 * value_numel(&m->graph.values[m->graph.input]) &&
                    nout == 2 * value_numel(&m->graph.values[m->graph.output]);
    CHECK(shapes_ok, "%s: fixture shapes match the graph", L->name);
    if (shapes_ok) {
        snprintf(what, sizeof what, "%s: converted U-Net vs torch (t = %g, %g)", L->name, t[0], t[1]);
        worst = forward_check(what, m, x, t, want, nout, CONV_ATOL, CONV_RTOL);

        /* written and read back through the native format: F32 is exact; F16 is exact for F16 inputs
         * and within F16 rounding of the weights otherwise */
        const char *p32 = tmp("out32.safetensors"), *p16 = tmp("out16.safetensors");
        ddpm_model *m32 = NULL, *m16 = NULL;
        CHECK(model_save(m, p32, ST_F32) == DDPM_OK && ddpm_model_load(p32, &m32) == DDPM_OK,
              "%s: F32 save + load: %s", L->name, ddpm_last_error());
        CHECK(model_save(m, p16, ST_F16) == DDPM_OK && ddpm_model_load(p16, &m16) == DDPM_OK,
              "%s: F16 save + load: %s", L->name, ddpm_last_error());
        if (m32) {
            snprintf(what, sizeof what, "%s: written as F32, reloaded", L->name);
            forward_check(what, m32, x, t, want, nout, CONV_ATOL, CONV_RTOL);
        }
        if (m16) {
            snprintf(what, sizeof what, "%s: written as F16, reloaded", L->name);
            if (L->f16_exact)
                forward_check(what, m16, x, t, want, nout, CONV_ATOL, CONV_RTOL);
            else /* F16 rounding of the weights: relative 2^-11 per weight */
                forward_check(what, m16, x, t, want, nout, 2e-2f, 2e-2f);
        }
        ddpm_model_free(m32);
        ddpm_model_free(m16);
        remove(p32);
        remove(p16);
    }
    free(x);
    free(t);
    free(want);
    ddpm_model_free(m);
    return worst;
}

/* ---- key mapping ------------------------------------------------------------------------------ */

static void test_mapping(void)
{
    static const char *const cases[][2] = {
        {"temb.dense.0.weight", "time_embedding.linear_1.weight"},
        {"temb.dense.1.bias", "time_embedding.linear_2.bias"},
        {"norm_out.weight", "conv_norm_out.weight"},
        {"down.0.block.1.temb_proj.weight", "down_blocks.0.resnets.1.time_emb_proj.weight"},
        {"down.1.block.0.nin_shortcut.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"},
        {"down.1.attn.1.norm.weight", "down_blocks.1.attentions.1.group_norm.weight"},
        {"down.1.attn.0.proj_out.weight", "down_blocks.1.attentions.0.to_out.0.weight"},
        {"down.2.downsample.conv.weight", "down_blocks.2.downsamplers.0.conv.weight"},
        {"mid.block_1.norm2.bias", "mid_block.resnets.0.norm2.bias"},
        {"mid.block_2.conv1.weight", "mid_block.resnets.1.conv1.weight"},
        {"mid.attn_1.q.weight", "mid_block.attentions.0.to_q.weight"},
        {"mid.attn_1.k.bias", "mid_block.attentions.0.to_k.bias"},
        {"mid.attn_1.v.weight", "mid_block.attentions.0.to_v.weight"},
        /* up is indexed by level: with 4 levels up.3 is the first (lowest-resolution) up block */
        {"up.3.upsample.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
        {"up.0.block.2.nin_shortcut.weight", "up_blocks.3.resnets.2.conv_shortcut.weight"},
        {"up.1.attn.2.v.bias", "up_blocks.2.attentions.2.to_v.bias"},
    };
    char out[160];
    int bad = 0;
    for (size_t i = 0; i < DDPM_ARRAY_LEN(cases); i++) {
        int ok = convert_map_original(cases[i][0], 4, out, sizeof out) && strcmp(out, cases[i][1]) == 0;
        if (!ok && bad++ < 4)
            printf("  %s -> %s, want %s\n", cases[i][0], out, cases[i][1]);
    }
    CHECK(bad == 0, "original-port key mapping: %zu cases", DDPM_ARRAY_LEN(cases));
    static const char *const not_mapped[] = {"up.4.block.0.norm1.weight", /* level beyond the config */
                                             "down.01.block.0.norm1.weight",
                                             "down.0.block.0.norm3.weight",
                                             "down.0.block.0.norm1.weight.x",
                                             "temb.dense.2.weight",
                                             "mid.attn_2.q.weight",
                                             "down.0.attn.0.q.running_mean",
                                             "conv_in.weight",
                                             "down_blocks.0.resnets.0.conv1.weight"};
    bad = 0;
    for (size_t i = 0; i < DDPM_ARRAY_LEN(not_mapped); i++)
        if (convert_map_original(not_mapped[i], 4, out, sizeof out) && bad++ < 4)
            printf("  %s was mapped to %s\n", not_mapped[i], out);
    CHECK(bad == 0, "keys outside the original-port naming are left alone (%zu cases)",
          DDPM_ARRAY_LEN(not_mapped));
}

/* ---- inspect ---------------------------------------------------------------------------------- */

static char *inspect_text(const char *in, const convert_opts *o, ddpm_result *r)
{
    const char *p = tmp("inspect.txt");
    FILE *f = fopen(p, "w+");
    if (!f)
        return NULL;
    *r = convert_inspect(in, o, f);
    long n = ftell(f);
    char *text = calloc((size_t)(n > 0 ? n : 0) + 1, 1);
    rewind(f);
    if (text && n > 0 && fread(text, 1, (size_t)n, f) != (size_t)n)
        text[0] = 0;
    fclose(f);
    remove(p);
    return text;
}

static void test_inspect(void)
{
    /* FNV-1a 64 known answers */
    CHECK(convert_fnv1a(CONVERT_FNV_OFFSET, (const uint8_t *)"", 0) == 0xcbf29ce484222325ull &&
              convert_fnv1a(CONVERT_FNV_OFFSET, (const uint8_t *)"a", 1) == 0xaf63dc4c8601ec8cull &&
              convert_fnv1a(CONVERT_FNV_OFFSET, (const uint8_t *)"foobar", 6) == 0x85944171f73967e8ull,
          "FNV-1a 64 known answers");

    /* a foreign file with a config: table, renamed keys, parameter count, binding */
    convert_opts o = {0};
    o.config = fx("convert/cifar_pipeline/unet/config.json");
    ddpm_result r;
    char *s = inspect_text(fx("convert/cifar_old_attn.safetensors"), &o, &r);
    CHECK(r == DDPM_OK && s, "inspect old-attention file: %s", ddpm_last_error());
    if (s) {
        CHECK(strstr(s, "params:     36787\n") != NULL, "inspect: parameter count 36787 (torch's)");
        CHECK(strstr(s, "down_blocks.1.attentions.0.query.weight") &&
                  strstr(s, "-> down_blocks.1.attentions.0.to_q.weight"),
              "inspect: stored and mapped names");
        CHECK(strstr(s, "F16  (8, 8)") != NULL, "inspect: dtype and shape columns");
        CHECK(strstr(s, "checksum:   ") && strstr(s, "FNV-1a 64"), "inspect: checksum line");
        CHECK(strstr(s, "check:      ok") != NULL, "inspect: binds to the config");
    }
    free(s);

    /* the checksum covers the stored bytes: the same tensors in a file of the native format give the
     * same sum when names and bytes agree (unet_a read twice), and another file another sum */
    char *a = inspect_text(fx("unet_a.safetensors"), NULL, &r),
         *b = inspect_text(fx("unet_b.safetensors"), NULL, &r);
    if (a && b) {
        const char *ca = strstr(a, "checksum:"), *cb = strstr(b, "checksum:");
        CHECK(ca && cb && strncmp(ca, cb, 30) != 0, "inspect: different files, different checksums");
        CHECK(strstr(a, "ddpm-vk native") && strstr(a, "check:      ok"),
              "inspect native: format and binding");
    }
    free(a);
    free(b);

    /* wrapped state dicts: {"state_dict": {"module.<key>": ...}} is unwrapped; the DDIM code's
     * [model, optimizer, epoch, step, ema] list needs --select, and 0 and 4 are different weights */
    s = inspect_text(fx("convert/wrapped.pt"), NULL, &r);
    CHECK(r == DDPM_OK && s && strstr(s, "under \"state_dict.module\"") && strstr(s, "\n  conv_in.weight "),
          "inspect: {state_dict: {module.*}} unwrapped: %s", r == DDPM_OK ? "" : ddpm_last_error());
    free(s);
    s = inspect_text(fx("convert/ddim_list.ckpt"), NULL, &r);
    CHECK(r == DDPM_ERR_MODEL && strstr(ddpm_last_error(), "--select") && strstr(ddpm_last_error(), "\"4\""),
          "inspect: a [model, optimizer, epoch, step, ema] list asks for --select: %s", ddpm_last_error());
    free(s);
    convert_opts sel = {0};
    sel.select = "0";
    a = inspect_text(fx("convert/ddim_list.ckpt"), &sel, &r);
    CHECK(r == DDPM_OK, "inspect --select 0: %s", ddpm_last_error());
    sel.select = "4";
    b = inspect_text(fx("convert/ddim_list.ckpt"), &sel, &r);
    CHECK(r == DDPM_OK, "inspect --select 4: %s", ddpm_last_error());
    if (a && b) {
        const char *ca = strstr(a, "checksum:"), *cb = strstr(b, "checksum:");
        CHECK(ca && cb && strncmp(ca, cb, 30) != 0 && strstr(b, "params:     6\n"),
              "--select 0 and 4 read different weights (the model and its EMA)");
    }
    free(a);
    free(b);

    /* the original port's naming is recognised without a config (levels from the down.I keys) */
    s = inspect_text(fx("convert/celeba_orig_bf16.pt"), NULL, &r);
    CHECK(r == DDPM_OK && s && strstr(s, "up.5.upsample.conv.weight") &&
              strstr(s, "-> up_blocks.0.upsamplers.0.conv.weight") && strstr(s, "original DDPM port"),
          "inspect: original-port names mapped without a config");
    free(s);

    /* with a config that does not fit: inspect succeeds and reports the failure */
    o.config = fx("convert/bad_shape_config.json");
    s = inspect_text(fx("convert/cifar_pipeline"), &o, &r);
    CHECK(r == DDPM_OK && s && strstr(s, "check:      FAILED") && strstr(s, "conv_in.weight"),
          "inspect with a mismatched config reports it");
    free(s);
}

/* ---- shipped configs ------------------------------------------------------------------------- */

/* tools/convert/configs: the real configs, for the original port's files (which carry none): their
 * graphs have torch's parameter counts of the full-size models (unet_counts.safetensors). */
static void test_shipped_configs(void)
{
    static const char *const cases[][2] = {{"ddpm-cifar10-32.json", "cifar10.params"},
                                           {"ddpm-256.json", "celebahq.params"}};
    st_file counts;
    test_open_fixture("unet_counts.safetensors", &counts);
    for (size_t i = 0; i < DDPM_ARRAY_LEN(cases); i++) {
        char path[600];
        snprintf(path, sizeof path, "%s/../../tools/convert/configs/%s", getenv("DDPM_FIXTURES"),
                 cases[i][0]);
        uint8_t *text = NULL;
        size_t n = 0;
        ddpm_unet_config c;
        ddpm_graph g;
        unet_config_default(&c);
        ddpm_result r = ddpm_read_file(path, 1 << 20, &text, &n);
        r = r == DDPM_OK ? unet_config_from_json((const char *)text, n, &c) : r;
        r = r == DDPM_OK ? graph_build(&c, &g) : r;
        CHECK(r == DDPM_OK, "%s: %s", cases[i][0], ddpm_last_error());
        free(text);
        if (r != DDPM_OK)
            continue;
        const char *want = st_meta_get(&counts, cases[i][1]);
        CHECK(want && g.n_weights == atoll(want), "configs/%s: %lld params, torch %s", cases[i][0],
              (long long)g.n_weights, want ? want : "?");
        graph_free(&g);
    }
    uint8_t *text = NULL;
    size_t n = 0;
    char path[600];
    snprintf(path, sizeof path, "%s/../../tools/convert/configs/ddpm-scheduler.json",
             getenv("DDPM_FIXTURES"));
    ddpm_schedule_config s;
    ddpm_result r = ddpm_read_file(path, 1 << 20, &text, &n);
    r = r == DDPM_OK ? schedule_config_from_json((const char *)text, n, &s) : r;
    CHECK(r == DDPM_OK, "configs/ddpm-scheduler.json: %s", ddpm_last_error());
    if (r == DDPM_OK)
        check_schedule("configs/ddpm-scheduler.json", &s, "ddpm");
    free(text);
    st_close(&counts);
}

/* ---- hostile inputs --------------------------------------------------------------------------- */

/* convert_load must fail with code and a message containing every needle ("" skips). */
static void expect_refused(const char *what, const char *in, const convert_opts *o, ddpm_result code,
                           const char *needle1, const char *needle2)
{
    ddpm_model *m = NULL;
    ddpm_result r = convert_load(in, o, &m, NULL);
    const char *msg = ddpm_last_error();
    int ok = r != DDPM_OK && (code == DDPM_OK || r == code) && m == NULL && strchr(msg, '\n') == NULL &&
             strstr(msg, needle1) && strstr(msg, needle2);
    CHECK(ok, "%s: refused (%s: %s)", what, ddpm_result_string(r), msg);
    if (ok)
        printf("  %s: %s\n", what, msg);
    ddpm_model_free(m);
}

/* The pipeline fixture's weights as F32 safetensors with one tensor dropped / one added / one renamed. */
static void write_variant(const char *path, const char *drop, const char *add, const char *poison,
                          float value)
{
    st_file f;
    test_open_fixture("convert/cifar_pipeline/unet/diffusion_pytorch_model.safetensors", &f);
    st_out_tensor *t = calloc((size_t)f.n_tensors + 1, sizeof *t);
    float **data = calloc((size_t)f.n_tensors + 1, sizeof *data);
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *s = &f.tensors[i];
        if (drop && strcmp(s->name, drop) == 0)
            continue;
        data[n] = malloc((size_t)s->numel * sizeof(float));
        st_to_f32(s, data[n]);
        if (poison && strcmp(s->name, poison) == 0)
            data[n][s->numel - 1] = value;
        t[n].name = s->name;
        t[n].ndim = s->ndim;
        memcpy(t[n].shape, s->shape, sizeof t[n].shape);
        t[n].data = data[n];
        n++;
    }
    static const float extra[4] = {1, 2, 3, 4};
    if (add)
        t[n++] = (st_out_tensor){add, 1, {4, 0, 0, 0}, extra};
    CHECK(st_write(path, t, n, NULL, 0, ST_F32) == DDPM_OK, "write variant %s: %s", path, ddpm_last_error());
    for (int i = 0; i < n; i++)
        if (data[i])
            free(data[i]);
    free(data);
    free(t);
    st_close(&f);
}

static void copy_prefix(const char *from, const char *to, double fraction)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (a && b) {
        fseek(a, 0, SEEK_END);
        long n = ftell(a);
        rewind(a);
        long keep = (long)((double)n * fraction);
        char *buf = malloc((size_t)keep + 1);
        if (buf && fread(buf, 1, (size_t)keep, a) == (size_t)keep)
            fwrite(buf, 1, (size_t)keep, b);
        free(buf);
    }
    if (a)
        fclose(a);
    if (b)
        fclose(b);
}

static void test_hostile(void)
{
    convert_opts o = {0};
    const char *cfg = fx("convert/cifar_pipeline/unet/config.json");

    o.config = fx("convert/bad_shape_config.json");
    expect_refused("config whose shapes disagree", fx("convert/cifar_pipeline"), &o, DDPM_ERR_MODEL,
                   "conv_in.weight has shape (4, 3, 3, 3), the config needs (4, 1, 3, 3)", "");

    o.config = cfg;
    write_variant(tmp("missing.safetensors"), "down_blocks.1.attentions.1.to_k.weight", NULL, NULL, 0);
    expect_refused("a missing key", tmp("missing.safetensors"), &o, DDPM_ERR_MODEL, "1 missing tensor",
                   "down_blocks.1.attentions.1.to_k.weight");
    write_variant(tmp("unknown.safetensors"), NULL, "down_blocks.0.resnets.0.norm3.weight", NULL, 0);
    expect_refused("an unknown key", tmp("unknown.safetensors"), &o, DDPM_ERR_MODEL, "1 unknown tensor",
                   "down_blocks.0.resnets.0.norm3.weight");
    write_variant(tmp("twice.safetensors"), NULL, "temb.dense.0.bias", NULL, 0);
    expect_refused("two keys naming one tensor", tmp("twice.safetensors"), &o, DDPM_ERR_MODEL,
                   "two tensors map to time_embedding.linear_1.bias", "temb.dense.0.bias");

    write_variant(tmp("nan.safetensors"), NULL, NULL, "mid_block.resnets.1.conv2.bias", NAN);
    expect_refused("a NaN weight", tmp("nan.safetensors"), &o, DDPM_ERR_MODEL,
                   "mid_block.resnets.1.conv2.bias holds NaN at element 7", "");
    write_variant(tmp("inf.safetensors"), NULL, NULL, "conv_out.weight", -INFINITY);
    expect_refused("an infinite weight", tmp("inf.safetensors"), &o, DDPM_ERR_MODEL,
                   "conv_out.weight holds an infinity", "");

    /* F16 output refuses weights beyond its range; F32 keeps them */
    write_variant(tmp("big.safetensors"), NULL, NULL, "conv_in.bias", 1e5f);
    ddpm_model *m = NULL;
    ddpm_result r = convert_load(tmp("big.safetensors"), &o, &m, NULL);
    CHECK(r == DDPM_OK, "a weight of 1e5 converts: %s", ddpm_last_error());
    if (m) {
        r = convert_save(m, tmp("big16.safetensors"), ST_F16);
        CHECK(r == DDPM_ERR_ARG && strstr(ddpm_last_error(), "conv_in.bias") &&
                  !exists(tmp("big16.safetensors")),
              "--dtype f16 refuses a weight of 1e5 by name, writing nothing: %s", ddpm_last_error());
        r = convert_save(m, tmp("big32.safetensors"), ST_F32);
        CHECK(r == DDPM_OK, "--dtype f32 keeps it: %s", ddpm_last_error());
        remove(tmp("big32.safetensors"));
    }
    ddpm_model_free(m);

    o.config = NULL;
    expect_refused("a single file without --config", tmp("unknown.safetensors"), &o, DDPM_ERR_ARG, "--config",
                   "");
    expect_refused("a missing input", tmp("nothing-here"), &o, DDPM_ERR_IO, "no such file", "");
    expect_refused("a folder without weights", fx("convert/cifar_pipeline/scheduler"), &o, DDPM_ERR_IO,
                   "diffusion_pytorch_model", "");
    o.scheduler = fx("convert/bad_shape_config.json"); /* a model config is no scheduler config */
    expect_refused("a config given as --scheduler", fx("convert/cifar_pipeline"), &o, DDPM_OK,
                   "bad_shape_config.json", "");
    o.scheduler = NULL;

    /* PyTorch files: a pickle calling os.system (nothing may run: no ddpm_pwned.txt appears), a zip
     * cut short */
    o.config = cfg;
    remove("ddpm_pwned.txt");
    expect_refused("a pickle calling os.system", fx("convert/evil_system.bin"), &o, DDPM_OK, "system", "");
    CHECK(!exists("ddpm_pwned.txt"), "the pickle's os.system call did not run");
    copy_prefix(fx("convert/cifar_flat/diffusion_pytorch_model.bin"), tmp("cut.bin"), 0.6);
    expect_refused("a truncated PyTorch zip", tmp("cut.bin"), &o, DDPM_OK, "cut.bin", "");
    o.select = "nothing";
    expect_refused("--select naming no sub-dict", fx("convert/cifar_orig.ckpt"), &o, DDPM_OK, "nothing", "");
    o.select = NULL;
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/ddpm-convert-test.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    st_file io;
    test_open_fixture("convert_io.safetensors", &io);
    float worst_all = 0;
    for (size_t i = 0; i < DDPM_ARRAY_LEN(layouts); i++) {
        float w = test_layout(&io, &layouts[i]);
        worst_all = w > worst_all ? w : worst_all;
    }
    printf("largest |converted - torch| over %zu layouts: %.3g\n", DDPM_ARRAY_LEN(layouts), worst_all);
    st_close(&io);
    test_mapping();
    test_inspect();
    test_shipped_configs();
    test_hostile();
    static const char *const left[] = {"missing.safetensors",
                                       "unknown.safetensors",
                                       "twice.safetensors",
                                       "nan.safetensors",
                                       "inf.safetensors",
                                       "big.safetensors",
                                       "cut.bin"};
    for (size_t i = 0; i < DDPM_ARRAY_LEN(left); i++)
        remove(tmp(left[i]));
    rmdir(tmpdir);
    return test_summary("convert");
}
