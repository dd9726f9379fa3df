/* model.c: a model = config + schedule + graph + float32 weights. Loads ddpm-vk safetensors (config in
 * __metadata__, every graph param bound by name and shape), saves them, and makes seeded random models. */
#include "model.h"

#include "rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_MAX_LISTED 3 /* names listed per kind in a mismatch message */

static void model_destroy(ddpm_model *m)
{
    if (!m)
        return;
    if (m->weights)
        for (int i = 0; i < m->graph.n_params; i++)
            free(m->weights[i]);
    free(m->weights);
    graph_free(&m->graph);
    free(m);
}

void ddpm_model_free(ddpm_model *m)
{
    model_destroy(m);
}

void ddpm_model_image_shape(const ddpm_model *m, int *channels, int *height, int *width)
{
    /* x_t and x_0 live in the input space of the U-Net */
    int c = m ? m->config.in_channels : 0, s = m ? m->config.sample_size : 0;
    if (channels)
        *channels = c;
    if (height)
        *height = s;
    if (width)
        *width = s;
}

/* A validated config and schedule, their graph and an empty weight table. */
static ddpm_result model_new(const ddpm_unet_config *c, const ddpm_schedule_config *s, ddpm_model **out)
{
    ddpm_result res = DDPM_OK;
    *out = NULL;
    TRY(unet_config_validate(c));
    TRY(schedule_config_validate(s));
    ddpm_model *m = ddpm_calloc(1, sizeof *m);
    if (!m)
        return DDPM_ERR_NOMEM;
    m->config = *c;
    m->schedule = *s;
    res = graph_build(c, &m->graph);
    if (res != DDPM_OK) {
        free(m);
        return res;
    }
    m->weights = ddpm_calloc((size_t)(m->graph.n_params > 0 ? m->graph.n_params : 1), sizeof *m->weights);
    if (!m->weights) {
        model_destroy(m);
        return DDPM_ERR_NOMEM;
    }
    *out = m;
cleanup:
    return res;
}

static ddpm_result alloc_weights(ddpm_model *m)
{
    for (int i = 0; i < m->graph.n_params; i++) {
        int64_t n = m->graph.params[i].numel;
        if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
            return ddpm_fail(DDPM_ERR_NOMEM, "parameter %s is too large", m->graph.params[i].name);
        m->weights[i] = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!m->weights[i])
            return ddpm_fail(DDPM_ERR_NOMEM, "out of memory for parameter %s (%lld floats)",
                             m->graph.params[i].name, (long long)n);
    }
    return DDPM_OK;
}

/* ---- loading ---------------------------------------------------------------------------------- */

/* Older diffusers checkpoints name the attention projections query/key/value/proj_attn. */
static const char *const attn_aliases[][2] = {
    {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};

/* The tensor for a param: its own name first, then the old attention name. */
static const st_tensor *find_tensor(const st_file *f, const char *name)
{
    const st_tensor *t = st_find(f, name);
    for (size_t a = 0; !t && a < DDPM_ARRAY_LEN(attn_aliases); a++) {
        const char *hit = strstr(name, attn_aliases[a][0]);
        char alt[DDPM_MAX_NAME + 16];
        if (!hit)
            continue;
        snprintf(alt, sizeof alt, "%.*s%s%s", (int)(hit - name), name, attn_aliases[a][1],
                 hit + strlen(attn_aliases[a][0]));
        t = st_find(f, alt);
    }
    return t;
}

/* Same shape, or a (Co, Ci) matrix against a (Co, Ci, 1, 1) kernel (1x1 conv == linear). */
static int shape_matches(const ddpm_param *p, const st_tensor *t)
{
    if (p->ndim == t->ndim) {
        for (int d = 0; d < p->ndim; d++)
            if (p->shape[d] != t->shape[d])
                return 0;
        return 1;
    }
    if (p->ndim == 2 && t->ndim == 4)
        return t->shape[0] == p->shape[0] && t->shape[1] == p->shape[1] && t->shape[2] == 1 &&
               t->shape[3] == 1;
    if (p->ndim == 4 && t->ndim == 2)
        return p->shape[0] == t->shape[0] && p->shape[1] == t->shape[1] && p->shape[2] == 1 &&
               p->shape[3] == 1;
    return 0;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t l = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && l < n; d++)
        l += (size_t)snprintf(buf + l, n - l, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (l < n)
        snprintf(buf + l, n - l, ")");
}

/* Prefixes the last error message with the file name. */
static ddpm_result fail_in(ddpm_result code, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ddpm_last_error());
    return ddpm_fail(code, "%s: %s", what, msg);
}

static void list_add(char *buf, size_t n, int index, const char *name)
{
    size_t l = strlen(buf);
    if (index < MODEL_MAX_LISTED)
        snprintf(buf + l, n - l, "%s%.80s", index ? ", " : "", name);
    else if (index == MODEL_MAX_LISTED)
        snprintf(buf + l, n - l, ", ...");
}

ddpm_result model_from_st(const st_file *f, const char *what, ddpm_model **out)
{
    ddpm_result res = DDPM_OK;
    ddpm_model *m = NULL;
    char *used = NULL;
    if (!out)
        return ddpm_fail(DDPM_ERR_ARG, "model_from_st: NULL output");
    *out = NULL;
    if (!f)
        return ddpm_fail(DDPM_ERR_ARG, "model_from_st: NULL file");
    if (!what)
        what = "model";

    const char *cj = st_meta_get(f, DDPM_META_CONFIG);
    if (!cj) {
        res =
            ddpm_fail(DDPM_ERR_FORMAT,
                      "%s: no \"%s\" in the safetensors __metadata__: not a ddpm-vk model (import diffusers "
                      "weights with ddpm-convert)",
                      what, DDPM_META_CONFIG);
        goto cleanup;
    }
    ddpm_unet_config c;
    ddpm_schedule_config s;
    /* a message from the config readers is prefixed with the file name */
    if ((res = unet_config_from_json(cj, strlen(cj), &c)) != DDPM_OK ||
        (res = unet_config_validate(&c)) != DDPM_OK) {
        fail_in(res, what);
        goto cleanup;
    }
    const char *sj = st_meta_get(f, DDPM_META_SCHEDULER);
    schedule_config_default(&s); /* no scheduler metadata: the DDPM defaults */
    if (sj && ((res = schedule_config_from_json(sj, strlen(sj), &s)) != DDPM_OK ||
               (res = schedule_config_validate(&s)) != DDPM_OK)) {
        fail_in(res, what);
        goto cleanup;
    }
    TRY(model_new(&c, &s, &m));

    /* bind every param to a tensor; collect missing, unknown and misshapen names before allocating */
    const ddpm_graph *g = &m->graph;
    used = ddpm_calloc((size_t)(f->n_tensors > 0 ? f->n_tensors : 1), 1);
    if (!used) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    char missing[256] = "", unknown[256] = "", bad_shape[320] = "";
    int n_missing = 0, n_unknown = 0, n_bad = 0;
    for (int i = 0; i < g->n_params; i++) {
        const ddpm_param *p = &g->params[i];
        const st_tensor *t = find_tensor(f, p->name);
        if (!t) {
            list_add(missing, sizeof missing, n_missing++, p->name);
            continue;
        }
        used[t - f->tensors] = 1;
        if (!shape_matches(p, t) && n_bad++ == 0) {
            char want[96], got[96];
            int64_t ps[4];
            for (int d = 0; d < 4; d++)
                ps[d] = p->shape[d];
            shape_str(want, sizeof want, p->ndim, ps);
            shape_str(got, sizeof got, t->ndim, t->shape);
            snprintf(bad_shape, sizeof bad_shape, "%.80s has shape %s, the config needs %s", t->name, got,
                     want);
        }
    }
    for (int i = 0; i < f->n_tensors; i++)
        if (!used[i])
            list_add(unknown, sizeof unknown, n_unknown++, f->tensors[i].name);
    if (n_missing || n_unknown) {
        char a[300] = "", b[300] = "";
        if (n_missing)
            snprintf(a, sizeof a, "%d missing tensor%s (%s)", n_missing, n_missing == 1 ? "" : "s", missing);
        if (n_unknown)
            snprintf(b, sizeof b, "%s%d unknown tensor%s (%s)", n_missing ? ", " : "", n_unknown,
                     n_unknown == 1 ? "" : "s", unknown);
        res = ddpm_fail(DDPM_ERR_MODEL, "%s: weights do not match the config: %s%s%s", what, a, b,
                        n_bad ? "; and a wrong shape" : "");
        goto cleanup;
    }
    if (n_bad) {
        res = ddpm_fail(DDPM_ERR_MODEL, "%s: %s%s", what, bad_shape,
                        n_bad > 1 ? " (and more wrong shapes)" : "");
        goto cleanup;
    }

    TRY(alloc_weights(m));
    for (int i = 0; i < g->n_params; i++)
        st_to_f32(find_tensor(f, g->params[i].name), m->weights[i]);
    *out = m;
    m = NULL;
cleanup:
    free(used);
    model_destroy(m);
    return res;
}

ddpm_result ddpm_model_load(const char *path, ddpm_model **out)
{
    if (!out)
        return ddpm_fail(DDPM_ERR_ARG, "ddpm_model_load: NULL output");
    *out = NULL;
    if (!path)
        return ddpm_fail(DDPM_ERR_ARG, "ddpm_model_load: no path");
    st_file f;
    ddpm_result res = st_open(path, &f);
    if (res != DDPM_OK)
        return res;
    res = model_from_st(&f, path, out);
    st_close(&f);
    return res;
}

/* ---- random models and saving ----------------------------------------------------------------- */

ddpm_result model_create_random(const ddpm_unet_config *c, const ddpm_schedule_config *s, uint64_t seed,
                                float std, ddpm_model **out)
{
    ddpm_result res = DDPM_OK;
    ddpm_model *m = NULL;
    if (!out)
        return ddpm_fail(DDPM_ERR_ARG, "model_create_random: NULL output");
    *out = NULL;
    if (!c || !s)
        return ddpm_fail(DDPM_ERR_ARG, "model_create_random: NULL config");
    TRY(model_new(c, s, &m));
    TRY(alloc_weights(m));
    /* param i draws the Philox normals of "image" i at step 0 under the seed: the same seed gives the
     * same weights on every machine, and a param's values do not depend on the others' sizes */
    for (int i = 0; i < m->graph.n_params; i++) {
        int64_t n = m->graph.params[i].numel;
        rng_normal_fill(m->weights[i], n, 1, i, 0, seed);
        for (int64_t k = 0; k < n; k++)
            m->weights[i][k] *= std;
    }
    /* GroupNorm starts as the identity affine map, as torch initialises it */
    for (int i = 0; i < m->graph.n_nodes; i++) {
        const ddpm_node *nd = &m->graph.nodes[i];
        if (nd->op != OP_GROUPNORM)
            continue;
        for (int k = 0; k < 2; k++) {
            int p = nd->w[k];
            if (p < 0)
                continue;
            for (int64_t e = 0; e < m->graph.params[p].numel; e++)
                m->weights[p][e] = k == 0 ? 1.0f : 0.0f;
        }
    }
    *out = m;
    m = NULL;
cleanup:
    model_destroy(m);
    return res;
}

ddpm_result model_save(const ddpm_model *m, const char *path, st_dtype dtype)
{
    if (!m || !path)
        return ddpm_fail(DDPM_ERR_ARG, "model_save: NULL argument");
    ddpm_result res = DDPM_OK;
    const ddpm_graph *g = &m->graph;
    char *cj = unet_config_to_json(&m->config);
    char *sj = schedule_config_to_json(&m->schedule);
    st_out_tensor *t = ddpm_calloc((size_t)(g->n_params > 0 ? g->n_params : 1), sizeof *t);
    if (!cj || !sj || !t) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "model_save: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < g->n_params; i++) {
        const ddpm_param *p = &g->params[i];
        t[i].name = p->name;
        t[i].ndim = p->ndim;
        for (int d = 0; d < 4; d++)
            t[i].shape[d] = d < p->ndim ? p->shape[d] : 0;
        t[i].data = m->weights[i];
    }
    st_meta meta[3] = {
        {(char *)"format", (char *)"pt"}, {(char *)DDPM_META_CONFIG, cj}, {(char *)DDPM_META_SCHEDULER, sj}};
    res = st_write(path, t, g->n_params, meta, 3, dtype);
cleanup:
    free(cj);
    free(sj);
    free(t);
    return res;
}
