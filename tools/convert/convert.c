/* convert.c: ddpm-convert's engine: locates weights, config and scheduler in diffusers folders or single
 * checkpoints, renames foreign keys (old attention names, the original DDPM port) and binds them. */
#include "convert.h"

#include "torchfile.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONFIG_MAX_BYTES (1u << 20)

uint64_t convert_fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---- key names -------------------------------------------------------------------------------- */

/* Reads a decimal index (no sign, at most 4 digits) followed by '.' at *s; advances past the dot. */
static int take_index(const char **s, int *out)
{
    const char *p = *s;
    int v = 0, digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 4) {
        v = v * 10 + (*p++ - '0');
        digits++;
    }
    if (digits == 0 || *p != '.' || (digits > 1 && (*s)[0] == '0'))
        return 0;
    *s = p + 1;
    *out = v;
    return 1;
}

/* Consumes prefix at *s. */
static int take(const char **s, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(*s, prefix, n) != 0)
        return 0;
    *s += n;
    return 1;
}

static int is_param(const char *s)
{
    return strcmp(s, "weight") == 0 || strcmp(s, "bias") == 0;
}

/* Module names inside a resnet and an attention block: original port -> diffusers. */
static const char *const resnet_names[][2] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"temb_proj.", "time_emb_proj."},
    {"norm2.", "norm2."}, {"conv2.", "conv2."}, {"nin_shortcut.", "conv_shortcut."}};
static const char *const attn_names[][2] = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."}};

/* Maps "<module>.<param>" through a table; the param part must be "weight" or "bias". */
static int map_leaf(const char *rest, const char *const (*table)[2], size_t n, const char **to,
                    const char **param)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = rest;
        if (take(&p, table[i][0]) && is_param(p)) {
            *to = table[i][1];
            *param = p;
            return 1;
        }
    }
    return 0;
}

/* Writes prefix + mod + param to out; 1 when it fits. */
static int emit(char *out, size_t n, const char *prefix, const char *mod, const char *param)
{
    int l = snprintf(out, n, "%s%s%s", prefix, mod, param);
    return l > 0 && (size_t)l < n;
}

int convert_map_original(const char *key, int levels, char *out, size_t n)
{
    const char *s = key, *mod, *param;
    char pre[64];
    int i, j;
    if (take(&s, "temb.dense.")) {
        if (take(&s, "0.") && is_param(s))
            return emit(out, n, "time_embedding.linear_1.", "", s);
        if (take(&s, "1.") && is_param(s))
            return emit(out, n, "time_embedding.linear_2.", "", s);
        return 0;
    }
    if (take(&s, "norm_out.") && is_param(s))
        return emit(out, n, "conv_norm_out.", "", s);
    s = key;
    if (take(&s, "mid.")) {
        if (take(&s, "block_1.") && map_leaf(s, resnet_names, DDPM_ARRAY_LEN(resnet_names), &mod, &param))
            return emit(out, n, "mid_block.resnets.0.", mod, param);
        if (take(&s, "block_2.") && map_leaf(s, resnet_names, DDPM_ARRAY_LEN(resnet_names), &mod, &param))
            return emit(out, n, "mid_block.resnets.1.", mod, param);
        if (take(&s, "attn_1.") && map_leaf(s, attn_names, DDPM_ARRAY_LEN(attn_names), &mod, &param))
            return emit(out, n, "mid_block.attentions.0.", mod, param);
        return 0;
    }
    int up = 0;
    if (!take(&s, "down.")) {
        if (!take(&s, "up."))
            return 0;
        up = 1;
    }
    if (!take_index(&s, &i) || i >= levels)
        return 0;
    /* the port builds `up` level by level and indexes it by level: up.{L-1-k} is up_blocks.{k} */
    int b = up ? levels - 1 - i : i;
    const char *blocks = up ? "up_blocks" : "down_blocks";
    if (take(&s, up ? "upsample.conv." : "downsample.conv.")) {
        if (!is_param(s))
            return 0;
        snprintf(pre, sizeof pre, "%s.%d.%s.0.conv.", blocks, b, up ? "upsamplers" : "downsamplers");
        return emit(out, n, pre, "", s);
    }
    if (take(&s, "block.") && take_index(&s, &j) &&
        map_leaf(s, resnet_names, DDPM_ARRAY_LEN(resnet_names), &mod, &param)) {
        snprintf(pre, sizeof pre, "%s.%d.resnets.%d.", blocks, b, j);
        return emit(out, n, pre, mod, param);
    }
    if (take(&s, "attn.") && take_index(&s, &j) &&
        map_leaf(s, attn_names, DDPM_ARRAY_LEN(attn_names), &mod, &param)) {
        snprintf(pre, sizeof pre, "%s.%d.attentions.%d.", blocks, b, j);
        return emit(out, n, pre, mod, param);
    }
    return 0;
}

/* Older diffusers checkpoints name the attention projections query/key/value/proj_attn. */
static const char *const old_attn_names[][2] = {
    {"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."}, {"proj_attn.", "to_out.0."}};

/* "...attentions.J.query.weight" -> "...attentions.J.to_q.weight". Returns 1 when mapped. */
static int map_old_attention(const char *key, char *out, size_t n)
{
    const char *a = strstr(key, ".attentions.");
    if (!a)
        return 0;
    const char *s = a + strlen(".attentions.");
    int j;
    const char *mod, *param;
    if (!take_index(&s, &j) || !map_leaf(s, old_attn_names, DDPM_ARRAY_LEN(old_attn_names), &mod, &param))
        return 0;
    int l = snprintf(out, n, "%.*s%s%s", (int)(s - key), key, mod, param);
    return l > 0 && (size_t)l < n;
}

/* ---- files ------------------------------------------------------------------------------------ */

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int join(char *out, size_t n, const char *dir, const char *name)
{
    int l = snprintf(out, n, "%s/%s", dir, name);
    return l > 0 && (size_t)l < n;
}

/* Where the weights, config and scheduler of IN are (config / scheduler "" when there is none). */
typedef struct sources {
    char weights[1024], config[1024], scheduler[1024];
} sources;

static ddpm_result locate(const char *in, const convert_opts *o, sources *src)
{
    memset(src, 0, sizeof *src);
    const char *paths[3] = {in, o ? o->config : NULL, o ? o->scheduler : NULL};
    for (int i = 0; i < 3; i++)
        if (paths[i] && strlen(paths[i]) > 900)
            return ddpm_fail(DDPM_ERR_ARG, "path too long (%zu bytes): %.60s...", strlen(paths[i]), paths[i]);
    if (is_dir(in)) {
        /* a pipeline folder (model_index.json, unet/, scheduler/) or the model folder itself */
        char mdir[1024], p[1024];
        join(mdir, sizeof mdir, in, "unet");
        if (!is_dir(mdir))
            snprintf(mdir, sizeof mdir, "%s", in);
        static const char *const weight_names[] = {
            "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"};
        for (size_t i = 0; i < DDPM_ARRAY_LEN(weight_names) && !src->weights[0]; i++)
            if (join(p, sizeof p, mdir, weight_names[i]) && is_file(p))
                snprintf(src->weights, sizeof src->weights, "%s", p);
        if (!src->weights[0])
            return ddpm_fail(DDPM_ERR_IO,
                             "%s: no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin "
                             "(expected a diffusers UNet2DModel folder or a pipeline folder with unet/)",
                             mdir);
        if (join(p, sizeof p, mdir, "config.json") && is_file(p))
            snprintf(src->config, sizeof src->config, "%s", p);
        /* the pipeline's scheduler: beside unet/, in the model folder (flat repositories), or in
         * ../scheduler when IN is the unet folder of a pipeline (../model_index.json) */
        const char *cands[3][2] = {{in, "scheduler/scheduler_config.json"},
                                   {mdir, "scheduler_config.json"},
                                   {in, "../scheduler/scheduler_config.json"}};
        int parent_is_pipeline = join(p, sizeof p, in, "../model_index.json") && is_file(p);
        for (int i = 0; i < (parent_is_pipeline ? 3 : 2) && !src->scheduler[0]; i++)
            if (join(p, sizeof p, cands[i][0], cands[i][1]) && is_file(p))
                snprintf(src->scheduler, sizeof src->scheduler, "%s", p);
    } else if (is_file(in)) {
        snprintf(src->weights, sizeof src->weights, "%s", in);
    } else {
        return ddpm_fail(DDPM_ERR_IO, "%s: no such file or folder", in);
    }
    if (o && o->config)
        snprintf(src->config, sizeof src->config, "%s", o->config);
    if (o && o->scheduler)
        snprintf(src->scheduler, sizeof src->scheduler, "%s", o->scheduler);
    return DDPM_OK;
}

/* Prefixes the last error message with a file name. */
static ddpm_result fail_in(ddpm_result code, const char *what)
{
    char msg[768];
    snprintf(msg, sizeof msg, "%s", ddpm_last_error());
    return ddpm_fail(code, "%s: %s", what, msg);
}

/* PyTorch checkpoints (zip or legacy torch.save files, or the tar format torch_open refuses by name) go
 * to torch_open, the rest to the safetensors reader. */
static ddpm_result open_weights(const char *path, st_file *f, int *is_torch)
{
    uint8_t head[16] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ddpm_fail(DDPM_ERR_IO, "%s: cannot open", path);
    size_t got = fread(head, 1, sizeof head, fp);
    fclose(fp);
    *is_torch = torch_sniff(head, got);
    memset(f, 0, sizeof *f);
    return *is_torch ? torch_open(path, f) : st_open(path, f);
}

/* First components of U-Net keys in either naming: a state dict starts here. */
static const char *const model_roots[] = {
    "conv_in",   "conv_out",  "conv_norm_out", "time_embedding", "down_blocks",
    "mid_block", "up_blocks", "temb",          "down",           "mid",
    "up",        "norm_out"};

static int first_component(const char *name, char *out, size_t n)
{
    const char *dot = strchr(name, '.');
    size_t l = dot ? (size_t)(dot - name) : strlen(name);
    if (l + 1 > n)
        return 0;
    memcpy(out, name, l);
    out[l] = 0;
    return 1;
}

/* A checkpoint may wrap the state dict ({"state_dict": ...}, {"ema": ...}, DataParallel's "module.",
 * the DDIM code's [model, optimizer, epoch, step, ema] list): with `select`, keep that sub-dict; else
 * strip a prefix shared by every key until the keys start like a U-Net's. Several candidates: refused
 * with their names (choose with --select). */
static ddpm_result select_state_dict(st_file *f, const char *select, const char *what, char *picked,
                                     size_t picked_n)
{
    char first[64], other[64];
    picked[0] = 0;
    if (select) {
        ddpm_result r = torch_select(f, select);
        snprintf(picked, picked_n, "%s", select);
        return r == DDPM_OK ? r : fail_in(r, what);
    }
    for (int round = 0; round < 4 && f->n_tensors > 0; round++) {
        if (!first_component(f->tensors[0].name, first, sizeof first))
            return DDPM_OK;
        for (size_t k = 0; k < DDPM_ARRAY_LEN(model_roots); k++)
            if (strcmp(first, model_roots[k]) == 0)
                return DDPM_OK;
        char seen[256] = "";
        int shared = 1, n_seen = 0;
        for (int i = 0; i < f->n_tensors; i++) {
            if (!first_component(f->tensors[i].name, other, sizeof other) || strcmp(other, first) != 0)
                shared = 0;
            char quoted[72];
            if (first_component(f->tensors[i].name, other, sizeof other) && n_seen < 8) {
                snprintf(quoted, sizeof quoted, "\"%s\"", other);
                if (!strstr(seen, quoted)) {
                    size_t l = strlen(seen);
                    snprintf(seen + l, sizeof seen - l, "%s%s", n_seen++ ? ", " : "", quoted);
                }
            }
        }
        if (!shared)
            return ddpm_fail(DDPM_ERR_MODEL,
                             "%s: the file holds several groups of tensors (%s): choose the state dict with "
                             "--select (the DDIM code's checkpoints: 0 = the model, 4 = its EMA)",
                             what, seen);
        ddpm_result r = torch_select(f, first);
        if (r != DDPM_OK)
            return fail_in(r, what);
        size_t l = strlen(picked);
        snprintf(picked + l, picked_n - l, "%s%s", l ? "." : "", first);
    }
    return DDPM_OK;
}

static ddpm_result read_text(const char *path, char **text)
{
    uint8_t *data;
    size_t size;
    *text = NULL;
    ddpm_result res = ddpm_read_file(path, CONFIG_MAX_BYTES, &data, &size);
    if (res != DDPM_OK)
        return res;
    char *t = realloc(data, size + 1);
    if (!t) {
        free(data);
        return ddpm_fail(DDPM_ERR_NOMEM, "%s: out of memory", path);
    }
    t[size] = 0;
    *text = t;
    return DDPM_OK;
}

/* ---- the renamed view ------------------------------------------------------------------------- */

/* The input's tensors under their diffusers names (data still in the input's buffer), sorted, with the
 * config and scheduler JSON as metadata: what model_from_st reads. */
typedef struct view {
    st_file f;
    char **stored; /* stored[i]: the input's name of f.tensors[i] */
    st_meta meta[2];
    int n_renamed, n_old_attn, n_original;
    int port_levels; /* levels of a file in the original port's naming (0: none) */
} view;

typedef struct named {
    st_tensor t;
    char *stored;
} named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const named *)a)->t.name, ((const named *)b)->t.name);
}

static void view_free(view *v)
{
    for (int i = 0; i < v->f.n_tensors; i++)
        free(v->f.tensors[i].name);
    free(v->f.tensors);
    free(v->stored);
    memset(v, 0, sizeof *v);
}

static const char *naming_of(const view *v)
{
    if (v->n_original)
        return "original DDPM port (temb.dense, down.I.block.J, mid.attn_1, ...)";
    if (v->n_old_attn)
        return "diffusers (old attention names: query/key/value/proj_attn)";
    return "diffusers";
}

/* The level count of a file in the original port's naming: 1 + the largest I of a "down.I." key
 * (every level has resnets there), or 0 when there is none. */
static int port_levels(const st_file *f, int strip)
{
    int levels = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *s = f->tensors[i].name + (strip ? 7 : 0);
        int level;
        if (take(&s, "down.") && take_index(&s, &level) && level + 1 > levels)
            levels = level + 1;
    }
    return levels;
}

/* levels: the config's level count (the port's up.I index depends on it); 0 when there is no config:
 * then the file's own (port_levels). */
static ddpm_result view_build(const st_file *in, int levels, const char *what, view *v)
{
    memset(v, 0, sizeof *v);
    int n = in->n_tensors;
    v->f.tensors = ddpm_calloc((size_t)(n > 0 ? n : 1), sizeof *v->f.tensors);
    v->stored = ddpm_calloc((size_t)(n > 0 ? n : 1), sizeof *v->stored);
    if (!v->f.tensors || !v->stored) {
        view_free(v);
        return DDPM_ERR_NOMEM;
    }
    /* checkpoints saved from torch.nn.DataParallel prefix every key with "module." */
    int strip = n > 0;
    for (int i = 0; i < n && strip; i++)
        strip = strncmp(in->tensors[i].name, "module.", 7) == 0;
    v->port_levels = port_levels(in, strip);
    if (levels <= 0)
        levels = v->port_levels;
    for (int i = 0; i < n; i++) {
        const char *key = in->tensors[i].name + (strip ? 7 : 0);
        char mapped[DDPM_MAX_NAME + 32];
        int renamed = 1;
        if (levels > 0 && convert_map_original(key, levels, mapped, sizeof mapped))
            v->n_original++;
        else if (map_old_attention(key, mapped, sizeof mapped))
            v->n_old_attn++;
        else {
            snprintf(mapped, sizeof mapped, "%s", key);
            renamed = strip;
        }
        v->n_renamed += renamed;
        v->f.tensors[i] = in->tensors[i];
        v->f.tensors[i].name = strdup(mapped);
        if (!v->f.tensors[i].name) {
            v->f.n_tensors = i;
            view_free(v);
            return ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
        }
        v->f.n_tensors = i + 1;
    }
    /* sort by the new names, the stored names travelling along */
    named *pairs = ddpm_calloc((size_t)(n > 0 ? n : 1), sizeof *pairs);
    if (!pairs) {
        view_free(v);
        return DDPM_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++)
        pairs[i] = (named){v->f.tensors[i], in->tensors[i].name};
    qsort(pairs, (size_t)n, sizeof *pairs, cmp_named);
    for (int i = 0; i < n; i++) {
        v->f.tensors[i] = pairs[i].t;
        v->stored[i] = pairs[i].stored;
    }
    free(pairs);
    for (int i = 1; i < n; i++)
        if (strcmp(v->f.tensors[i - 1].name, v->f.tensors[i].name) == 0) {
            ddpm_result r = ddpm_fail(DDPM_ERR_MODEL, "%s: two tensors map to %.96s (%.96s and %.96s)", what,
                                      v->f.tensors[i].name, v->stored[i - 1] ? v->stored[i - 1] : "?",
                                      v->stored[i] ? v->stored[i] : "?");
            view_free(v);
            return r;
        }
    return DDPM_OK;
}

/* ---- config and scheduler --------------------------------------------------------------------- */

typedef struct texts {
    char *config, *scheduler; /* malloc'ed JSON, or NULL */
    char config_from[1024], scheduler_from[1024];
} texts;

static void texts_free(texts *t)
{
    free(t->config);
    free(t->scheduler);
    t->config = t->scheduler = NULL;
}

/* Config: the file given or found, else the native metadata. Scheduler likewise, else NULL (defaults).
 * Both are parsed and validated here so that a message names the file it is about. */
static ddpm_result read_texts(const sources *src, const st_file *f, texts *t, ddpm_unet_config *c)
{
    ddpm_result res = DDPM_OK;
    memset(t, 0, sizeof *t);
    if (src->config[0]) {
        TRY(read_text(src->config, &t->config));
        snprintf(t->config_from, sizeof t->config_from, "%s", src->config);
    } else if (st_meta_get(f, DDPM_META_CONFIG)) {
        if (!(t->config = strdup(st_meta_get(f, DDPM_META_CONFIG))))
            return ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
        snprintf(t->config_from, sizeof t->config_from, "%.900s (metadata)", src->weights);
    }
    if (src->scheduler[0]) {
        TRY(read_text(src->scheduler, &t->scheduler));
        snprintf(t->scheduler_from, sizeof t->scheduler_from, "%s", src->scheduler);
    } else if (st_meta_get(f, DDPM_META_SCHEDULER)) {
        if (!(t->scheduler = strdup(st_meta_get(f, DDPM_META_SCHEDULER)))) {
            res = ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        snprintf(t->scheduler_from, sizeof t->scheduler_from, "%.900s (metadata)", src->weights);
    } else {
        snprintf(t->scheduler_from, sizeof t->scheduler_from,
                 "none found: DDPM defaults (linear 1e-4 .. 0.02, T 1000, fixed_small, clip, epsilon)");
    }
    if (t->config) {
        unet_config_default(c);
        if ((res = unet_config_from_json(t->config, strlen(t->config), c)) != DDPM_OK ||
            (res = unet_config_validate(c)) != DDPM_OK) {
            fail_in(res, t->config_from);
            goto cleanup;
        }
    }
    if (t->scheduler) {
        /* a scheduler config names a *Scheduler class (DDPM, DDIM, PNDM share these fields); the JSON
         * reader ignores unknown keys, so a model config given here would pass for the defaults */
        cJSON *root = cJSON_Parse(t->scheduler);
        const cJSON *cls = root ? cJSON_GetObjectItemCaseSensitive(root, "_class_name") : NULL;
        size_t l = cJSON_IsString(cls) && cls->valuestring ? strlen(cls->valuestring) : 0;
        int bad = l && (l < 9 || strcmp(cls->valuestring + l - 9, "Scheduler") != 0);
        if (bad)
            res = ddpm_fail(DDPM_ERR_MODEL, "%s: _class_name \"%.64s\" is not a scheduler", t->scheduler_from,
                            cls->valuestring);
        cJSON_Delete(root);
        if (bad)
            goto cleanup;
        ddpm_schedule_config s;
        schedule_config_default(&s);
        if ((res = schedule_config_from_json(t->scheduler, strlen(t->scheduler), &s)) != DDPM_OK ||
            (res = schedule_config_validate(&s)) != DDPM_OK) {
            fail_in(res, t->scheduler_from);
            goto cleanup;
        }
    }
    return DDPM_OK;
cleanup:
    texts_free(t);
    return res;
}

/* Binds the view to the config's graph (model_from_st: names, shapes, missing and unknown keys). */
static ddpm_result bind(view *v, texts *t, const char *what, ddpm_model **out)
{
    int n_meta = 0;
    v->meta[n_meta++] = (st_meta){(char *)DDPM_META_CONFIG, t->config};
    if (t->scheduler)
        v->meta[n_meta++] = (st_meta){(char *)DDPM_META_SCHEDULER, t->scheduler};
    v->f.meta = v->meta; /* sorted: "ddpm.config" < "ddpm.scheduler" */
    v->f.n_meta = n_meta;
    return model_from_st(&v->f, what, out);
}

/* The opened input of convert_load and convert_inspect: where it is, its tensors (with the chosen
 * PyTorch sub-dict), its config and scheduler texts and the parsed config. */
typedef struct input {
    sources src;
    st_file f;
    int opened, is_torch;
    char picked[256]; /* the PyTorch sub-dict read, "" for all */
    texts t;
    ddpm_unet_config c;
} input;

static ddpm_result input_open(const char *in, const convert_opts *o, input *inp)
{
    ddpm_result res = DDPM_OK;
    TRY(locate(in, o, &inp->src));
    TRY(open_weights(inp->src.weights, &inp->f, &inp->is_torch));
    inp->opened = 1;
    if (inp->is_torch)
        TRY(select_state_dict(&inp->f, o ? o->select : NULL, inp->src.weights, inp->picked,
                              sizeof inp->picked));
    else if (o && o->select)
        return ddpm_fail(DDPM_ERR_ARG, "%s: --select applies to PyTorch checkpoints only", inp->src.weights);
    TRY(read_texts(&inp->src, &inp->f, &inp->t, &inp->c));
cleanup:
    return res;
}

static void input_close(input *inp)
{
    texts_free(&inp->t);
    if (inp->opened)
        st_close(&inp->f);
}

ddpm_result convert_load(const char *in, const convert_opts *o, ddpm_model **out, convert_report *report)
{
    ddpm_result res = DDPM_OK;
    input inp = {0};
    view v = {0};
    *out = NULL;
    TRY(input_open(in, o, &inp));
    if (!inp.t.config) {
        res = ddpm_fail(DDPM_ERR_ARG,
                        "%s: no config: give --config config.json (the diffusers UNet2DModel config; for the "
                        "original DDPM CIFAR-10 port, google/ddpm-cifar10-32's)",
                        inp.src.weights);
        goto cleanup;
    }
    TRY(view_build(&inp.f, inp.c.levels, inp.src.weights, &v));
    if (v.n_original && v.port_levels != inp.c.levels) {
        res = ddpm_fail(DDPM_ERR_MODEL,
                        "%s: the weights have %d levels (down.0 .. down.%d) but the config %s has %d "
                        "(block_out_channels)",
                        inp.src.weights, v.port_levels, v.port_levels - 1, inp.t.config_from, inp.c.levels);
        goto cleanup;
    }
    TRY(bind(&v, &inp.t, inp.src.weights, out));
    /* a NaN or an infinity would turn every sample into NaN: name the tensor instead */
    for (int i = 0; i < (*out)->graph.n_params; i++) {
        const float *w = (*out)->weights[i];
        for (int64_t k = 0; k < (*out)->graph.params[i].numel; k++)
            if (!isfinite(w[k])) {
                res = ddpm_fail(DDPM_ERR_MODEL, "%s: %s holds %s at element %lld", inp.src.weights,
                                (*out)->graph.params[i].name, isnan(w[k]) ? "NaN" : "an infinity",
                                (long long)k);
                ddpm_model_free(*out);
                *out = NULL;
                goto cleanup;
            }
    }
    if (report) {
        memset(report, 0, sizeof *report);
        snprintf(report->weights, sizeof report->weights, "%s", inp.src.weights);
        snprintf(report->config, sizeof report->config, "%s", inp.t.config_from);
        snprintf(report->scheduler, sizeof report->scheduler, "%s", inp.t.scheduler_from);
        report->naming = naming_of(&v);
        snprintf(report->state_dict, sizeof report->state_dict, "%s", inp.picked);
        report->n_tensors = inp.f.n_tensors;
        report->n_renamed = v.n_renamed;
        for (int i = 0; i < inp.f.n_tensors; i++)
            if ((unsigned)inp.f.tensors[i].dtype < 3)
                report->dtypes[inp.f.tensors[i].dtype]++;
    }
cleanup:
    view_free(&v);
    input_close(&inp);
    return res;
}

/* F16 holds magnitudes up to 65504: a larger weight would be stored as an infinity. */
static ddpm_result check_f16_range(const ddpm_model *m)
{
    for (int i = 0; i < m->graph.n_params; i++)
        for (int64_t k = 0; k < m->graph.params[i].numel; k++)
            if (fabsf(m->weights[i][k]) > 65504.0f)
                return ddpm_fail(DDPM_ERR_ARG,
                                 "%s holds %g at element %lld, beyond F16's range: use --dtype f32",
                                 m->graph.params[i].name, (double)m->weights[i][k], (long long)k);
    return DDPM_OK;
}

ddpm_result convert_save(const ddpm_model *m, const char *path, st_dtype dtype)
{
    if (dtype == ST_F16) {
        ddpm_result r = check_f16_range(m);
        if (r != DDPM_OK)
            return r;
    }
    return model_save(m, path, dtype);
}

/* ---- inspect ---------------------------------------------------------------------------------- */

static const char *dtype_name(st_dtype d)
{
    switch (d) {
    case ST_F32: return "F32";
    case ST_F16: return "F16";
    case ST_BF16: return "BF16";
    }
    return "?";
}

static int dtype_size(st_dtype d)
{
    return d == ST_F32 ? 4 : 2;
}

static void print_config(FILE *out, const ddpm_unet_config *c)
{
    fprintf(out, "            image %d x %d x %d (channels x height x width), out_channels %d\n",
            c->in_channels, c->sample_size, c->sample_size, c->out_channels);
    fprintf(out, "            block_out_channels [");
    for (int i = 0; i < c->levels; i++)
        fprintf(out, "%s%d", i ? ", " : "", c->block_out_channels[i]);
    fprintf(out, "], layers_per_block %d, attention down [", c->layers_per_block);
    for (int i = 0; i < c->levels; i++)
        fprintf(out, "%s%d", i ? ", " : "", c->down_attn[i]);
    fprintf(out, "] up [");
    for (int i = 0; i < c->levels; i++)
        fprintf(out, "%s%d", i ? ", " : "", c->up_attn[i]);
    fprintf(out, "] mid %d\n", c->mid_attn);
    fprintf(out,
            "            groups %d, eps %g, head dim %d (0: one head), downsample_padding %d, freq_shift %g, "
            "flip_sin_to_cos %d, mid_block_scale_factor %g\n",
            c->norm_num_groups, c->norm_eps, c->attention_head_dim, c->downsample_padding, c->freq_shift,
            c->flip_sin_to_cos, c->mid_block_scale_factor);
}

static void print_schedule(FILE *out, const char *json)
{
    static const char *const beta[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "quad", "sigmoid"};
    static const char *const pred[] = {"epsilon", "sample", "v_prediction"};
    ddpm_schedule_config s;
    schedule_config_default(&s);
    if (json)
        schedule_config_from_json(json, strlen(json), &s); /* validated by read_texts */
    fprintf(out,
            "            %s betas %g .. %g, T %d, variance %s, clip %s (range %g), prediction %s, "
            "steps_offset %d, set_alpha_to_one %d\n",
            beta[s.beta_schedule], s.beta_start, s.beta_end, s.num_train_timesteps,
            s.variance_type == VAR_FIXED_LARGE ? "fixed_large" : "fixed_small", s.clip_sample ? "yes" : "no",
            s.clip_sample_range, pred[s.prediction_type], s.steps_offset, s.set_alpha_to_one);
}

ddpm_result convert_inspect(const char *in, const convert_opts *o, FILE *out)
{
    ddpm_result res = DDPM_OK;
    input inp = {0};
    view v = {0};
    TRY(input_open(in, o, &inp));
    TRY(view_build(&inp.f, inp.t.config ? inp.c.levels : 0, inp.src.weights, &v));

    fprintf(out, "file:       %s (%s, %zu bytes)\n", inp.src.weights,
            inp.is_torch ? "PyTorch zip + pickle" : "safetensors", inp.f.size);
    if (st_meta_get(&inp.f, DDPM_META_CONFIG))
        fprintf(out, "format:     ddpm-vk native (config in __metadata__)\n");
    if (st_meta_get(&inp.f, "torch.skipped"))
        fprintf(out, "skipped:    %.400s (not floating-point tensors)\n",
                st_meta_get(&inp.f, "torch.skipped"));
    if (inp.picked[0])
        fprintf(out, "state dict: the tensors under \"%s\"\n", inp.picked);
    fprintf(out, "naming:     %s; %d of %d keys renamed\n", naming_of(&v), v.n_renamed, inp.f.n_tensors);
    if (inp.t.config) {
        fprintf(out, "config:     %s\n", inp.t.config_from);
        print_config(out, &inp.c);
    } else {
        fprintf(out, "config:     none (convert with --config config.json)\n");
    }
    fprintf(out, "schedule:   %s\n", inp.t.scheduler_from);
    print_schedule(out, inp.t.scheduler);

    /* the table in stored-name order; the checksum covers the stored bytes in that order */
    int n = inp.f.n_tensors;
    int *order = ddpm_calloc((size_t)(n > 0 ? n : 1), sizeof *order);
    if (!order) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort by stored name: tables are small */
        for (int k = i; k > 0 && strcmp(v.stored[order[k - 1]], v.stored[order[k]]) > 0; k--) {
            int tmp = order[k];
            order[k] = order[k - 1];
            order[k - 1] = tmp;
        }
    int64_t params = 0;
    uint64_t h = CONVERT_FNV_OFFSET;
    fprintf(out, "tensors:    %d (stored name [-> diffusers name], dtype, shape)\n", n);
    for (int r = 0; r < n; r++) {
        const st_tensor *tt = &v.f.tensors[order[r]];
        const char *stored = v.stored[order[r]];
        char shape[80];
        size_t l = (size_t)snprintf(shape, sizeof shape, "(");
        for (int d = 0; d < tt->ndim && l < sizeof shape; d++)
            l += (size_t)snprintf(shape + l, sizeof shape - l, "%s%lld", d ? ", " : "",
                                  (long long)tt->shape[d]);
        if (l < sizeof shape)
            snprintf(shape + l, sizeof shape - l, ")");
        if (strcmp(stored, tt->name) != 0)
            fprintf(out, "  %-48s -> %-48s %-4s %s\n", stored, tt->name, dtype_name(tt->dtype), shape);
        else
            fprintf(out, "  %-48s %-4s %s\n", stored, dtype_name(tt->dtype), shape);
        params += tt->numel;
        h = convert_fnv1a(h, tt->data, (size_t)tt->numel * (size_t)dtype_size(tt->dtype));
    }
    free(order);
    fprintf(out, "params:     %lld\n", (long long)params);
    fprintf(out, "checksum:   %016llx (FNV-1a 64 of the stored tensor bytes, in stored-name order)\n",
            (unsigned long long)h);
    if (inp.t.config) {
        ddpm_model *m = NULL;
        if (bind(&v, &inp.t, inp.src.weights, &m) == DDPM_OK)
            fprintf(out,
                    "check:      ok: every tensor binds to the config's graph (%d tensors, %lld params)\n",
                    m->graph.n_params, (long long)m->graph.n_weights);
        else
            fprintf(out, "check:      FAILED: %s\n", ddpm_last_error());
        ddpm_model_free(m);
    }
cleanup:
    view_free(&v);
    input_close(&inp);
    return res;
}
