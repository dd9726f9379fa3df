/* config.c: the UNet2DModel config and the DDPM/DDIM scheduler config: defaults, validation and the
 * diffusers config.json / scheduler_config.json text (read with cJSON, written back with the same keys). */
#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- defaults --------------------------------------------------------------------------------- */

void unet_config_default(ddpm_unet_config *c)
{
    /* google/ddpm-cifar10-32 */
    static const int ch[4] = {128, 256, 256, 256};
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->sample_size = 32;
    c->levels = 4;
    for (int i = 0; i < 4; i++)
        c->block_out_channels[i] = ch[i];
    c->down_attn[1] = 1; /* DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D */
    c->up_attn[2] = 1;   /* UpBlock2D, UpBlock2D, AttnUpBlock2D, UpBlock2D */
    c->layers_per_block = 2;
    c->mid_attn = 1;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-6f;
    c->attention_head_dim = 0;
    c->downsample_padding = 0;
    c->freq_shift = 1.0f;
    c->flip_sin_to_cos = 0;
    c->mid_block_scale_factor = 1.0f;
}

void schedule_config_default(ddpm_schedule_config *s)
{
    memset(s, 0, sizeof *s);
    s->beta_schedule = BETA_LINEAR;
    s->beta_start = 1e-4;
    s->beta_end = 0.02;
    s->num_train_timesteps = 1000;
    s->variance_type = VAR_FIXED_SMALL;
    s->clip_sample = 1;
    s->clip_sample_range = 1.0;
    s->prediction_type = PRED_EPSILON;
    s->steps_offset = 0;
    s->set_alpha_to_one = 1;
}

/* ---- validation ------------------------------------------------------------------------------- */

static int has_attention_with(const ddpm_unet_config *c, int level)
{
    /* level counts from the highest resolution; up_attn[0] is the lowest resolution */
    return c->down_attn[level] || c->up_attn[c->levels - 1 - level] ||
           (c->mid_attn && level == c->levels - 1);
}

ddpm_result unet_config_validate(const ddpm_unet_config *c)
{
    if (c->in_channels < 1 || c->in_channels > 4)
        return ddpm_fail(DDPM_ERR_MODEL, "config: in_channels %d out of range 1..4", c->in_channels);
    if (c->out_channels < 1 || c->out_channels > 4)
        return ddpm_fail(DDPM_ERR_MODEL, "config: out_channels %d out of range 1..4", c->out_channels);
    if (c->levels < 1 || c->levels > DDPM_MAX_LEVELS)
        return ddpm_fail(DDPM_ERR_MODEL, "config: %d levels (block_out_channels) out of range 1..%d",
                         c->levels, DDPM_MAX_LEVELS);
    if (c->norm_num_groups < 1 || c->norm_num_groups > 4096)
        return ddpm_fail(DDPM_ERR_MODEL, "config: norm_num_groups %d out of range 1..4096",
                         c->norm_num_groups);
    for (int i = 0; i < c->levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > 4096)
            return ddpm_fail(DDPM_ERR_MODEL, "config: block_out_channels[%d] = %d out of range 1..4096", i,
                             ch);
        if (ch % c->norm_num_groups != 0)
            return ddpm_fail(DDPM_ERR_MODEL,
                             "config: norm_num_groups %d does not divide block_out_channels[%d] = %d",
                             c->norm_num_groups, i, ch);
        if ((c->down_attn[i] != 0 && c->down_attn[i] != 1) || (c->up_attn[i] != 0 && c->up_attn[i] != 1))
            return ddpm_fail(DDPM_ERR_MODEL, "config: attention flags of level %d must be 0 or 1", i);
    }
    if (c->block_out_channels[0] % 2 != 0)
        return ddpm_fail(DDPM_ERR_MODEL,
                         "config: block_out_channels[0] = %d must be even (sinusoidal time embedding)",
                         c->block_out_channels[0]);
    if (c->sample_size < 1 || c->sample_size > 4096)
        return ddpm_fail(DDPM_ERR_MODEL, "config: sample_size %d out of range 1..4096", c->sample_size);
    int down = 1 << (c->levels - 1);
    if (c->sample_size % down != 0)
        return ddpm_fail(DDPM_ERR_MODEL,
                         "config: sample_size %d is not divisible by %d (%d levels halve it %d times)",
                         c->sample_size, down, c->levels, c->levels - 1);
    if (c->layers_per_block < 1 || c->layers_per_block > 16)
        return ddpm_fail(DDPM_ERR_MODEL, "config: layers_per_block %d out of range 1..16",
                         c->layers_per_block);
    if (c->mid_attn != 0 && c->mid_attn != 1)
        return ddpm_fail(DDPM_ERR_MODEL, "config: add_attention must be 0 or 1");
    if (!(c->norm_eps > 0.0f) || !(c->norm_eps <= 1.0f))
        return ddpm_fail(DDPM_ERR_MODEL, "config: norm_eps %g must be in (0, 1]", (double)c->norm_eps);
    if (c->attention_head_dim < 0 || c->attention_head_dim > 4096)
        return ddpm_fail(DDPM_ERR_MODEL,
                         "config: attention_head_dim %d out of range (0 = one head, else 1..4096)",
                         c->attention_head_dim);
    if (c->attention_head_dim > 0)
        for (int i = 0; i < c->levels; i++)
            if (has_attention_with(c, i) && c->block_out_channels[i] % c->attention_head_dim != 0)
                return ddpm_fail(DDPM_ERR_MODEL,
                                 "config: attention_head_dim %d does not divide the %d channels of level %d",
                                 c->attention_head_dim, c->block_out_channels[i], i);
    if (c->downsample_padding != 0 && c->downsample_padding != 1)
        return ddpm_fail(DDPM_ERR_MODEL, "config: downsample_padding %d must be 0 or 1",
                         c->downsample_padding);
    double half = c->block_out_channels[0] / 2;
    if (!isfinite(c->freq_shift) || !(half - c->freq_shift > 0.0))
        return ddpm_fail(DDPM_ERR_MODEL,
                         "config: freq_shift %g must be finite and below half the embedding width %g",
                         (double)c->freq_shift, half);
    if (c->flip_sin_to_cos != 0 && c->flip_sin_to_cos != 1)
        return ddpm_fail(DDPM_ERR_MODEL, "config: flip_sin_to_cos must be 0 or 1");
    if (!isfinite(c->mid_block_scale_factor) || !(c->mid_block_scale_factor > 0.0f))
        return ddpm_fail(DDPM_ERR_MODEL, "config: mid_block_scale_factor %g must be finite and > 0",
                         (double)c->mid_block_scale_factor);
    return DDPM_OK;
}

ddpm_result schedule_config_validate(const ddpm_schedule_config *s)
{
    if ((unsigned)s->beta_schedule > BETA_SIGMOID)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: unknown beta_schedule %d", (int)s->beta_schedule);
    if (s->num_train_timesteps < 1 || s->num_train_timesteps > 100000)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: num_train_timesteps %d out of range 1..100000",
                         s->num_train_timesteps);
    if (s->beta_schedule != BETA_SQUAREDCOS_CAP_V2) { /* the cosine schedule ignores beta_start / beta_end */
        if (!(s->beta_start > 0.0 && s->beta_start < 1.0))
            return ddpm_fail(DDPM_ERR_MODEL, "scheduler: beta_start %g must be in (0, 1)", s->beta_start);
        if (!(s->beta_end > 0.0 && s->beta_end < 1.0))
            return ddpm_fail(DDPM_ERR_MODEL, "scheduler: beta_end %g must be in (0, 1)", s->beta_end);
    }
    if ((unsigned)s->variance_type > VAR_FIXED_LARGE)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: unknown variance_type %d", (int)s->variance_type);
    if ((unsigned)s->prediction_type > PRED_V)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: unknown prediction_type %d", (int)s->prediction_type);
    if (s->clip_sample != 0 && s->clip_sample != 1)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: clip_sample must be 0 or 1");
    if (!(s->clip_sample_range > 0.0) || !isfinite(s->clip_sample_range))
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: clip_sample_range %g must be finite and > 0",
                         s->clip_sample_range);
    if (s->steps_offset < 0 || s->steps_offset >= s->num_train_timesteps)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: steps_offset %d out of range 0..%d", s->steps_offset,
                         s->num_train_timesteps - 1);
    if (s->set_alpha_to_one != 0 && s->set_alpha_to_one != 1)
        return ddpm_fail(DDPM_ERR_MODEL, "scheduler: set_alpha_to_one must be 0 or 1");
    return DDPM_OK;
}

/* ---- JSON reading ----------------------------------------------------------------------------- */

/* Each reader leaves *out alone when the key is absent and returns DDPM_OK, else the code given to
 * ddpm_fail: DDPM_ERR_FORMAT for a wrong type, DDPM_ERR_UNSUPPORTED for a value DDPM models never use. */

static const cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* An integral JSON number within int range. */
static int as_int(const cJSON *v, int *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d == floor(d)) || d < INT_MIN || d > INT_MAX)
        return 0;
    *out = (int)d;
    return 1;
}

static ddpm_result read_int(const char *what, const cJSON *obj, const char *key, int *out)
{
    const cJSON *v = get(obj, key);
    if (v && !as_int(v, out))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be an integer", what, key);
    return DDPM_OK;
}

static ddpm_result read_double(const char *what, const cJSON *obj, const char *key, double *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return DDPM_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be a number", what, key);
    *out = v->valuedouble;
    return DDPM_OK;
}

static ddpm_result read_float(const char *what, const cJSON *obj, const char *key, float *out)
{
    double d = *out;
    ddpm_result r = read_double(what, obj, key, &d);
    if (r == DDPM_OK)
        *out = (float)d;
    return r;
}

static ddpm_result read_bool(const char *what, const cJSON *obj, const char *key, int *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return DDPM_OK;
    if (!cJSON_IsBool(v))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return DDPM_OK;
}

/* A string that must be one of `allowed` (its index is stored in *out). */
static ddpm_result read_enum(const char *what, const cJSON *obj, const char *key, const char *const *allowed,
                             int n, int *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return DDPM_OK;
    if (!cJSON_IsString(v) || !v->valuestring)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be a string", what, key);
    for (int i = 0; i < n; i++)
        if (strcmp(v->valuestring, allowed[i]) == 0) {
            *out = i;
            return DDPM_OK;
        }
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", allowed[i]);
    }
    return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: unsupported %s \"%.64s\" (supported: %s)", what, key,
                     v->valuestring, list);
}

/* A string key whose only supported value is `only`. */
static ddpm_result require_string(const char *what, const cJSON *obj, const char *key, const char *only)
{
    int dummy = 0;
    if (cJSON_IsNull(get(obj, key)))
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"%s\" = null is not supported (only \"%s\")", what, key,
                         only);
    return read_enum(what, obj, key, &only, 1, &dummy);
}

/* A key that must be absent or null (features DDPM models do not use). */
static ddpm_result require_null(const char *what, const cJSON *obj, const char *key)
{
    const cJSON *v = get(obj, key);
    if (v && !cJSON_IsNull(v))
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"%s\" must be null (not supported)", what, key);
    return DDPM_OK;
}

/* A key that must be absent or false. */
static ddpm_result require_false(const char *what, const cJSON *obj, const char *key)
{
    int b = 0;
    ddpm_result r = read_bool(what, obj, key, &b);
    if (r == DDPM_OK && b)
        r = ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"%s\" = true is not supported", what, key);
    return r;
}

/* A key that is null, absent or equal to `want`. */
static ddpm_result require_null_or(const char *what, const cJSON *obj, const char *key, int want)
{
    const cJSON *v = get(obj, key);
    int x = want;
    if (!v || cJSON_IsNull(v))
        return DDPM_OK;
    if (!as_int(v, &x))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be null or an integer", what, key);
    if (x != want)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"%s\" = %d is not supported (only null or %d)", what,
                         key, x, want);
    return DDPM_OK;
}

static ddpm_result parse_object(const char *what, const char *json, size_t len, cJSON **root)
{
    *root = NULL;
    if (!json)
        return ddpm_fail(DDPM_ERR_ARG, "%s: no JSON text", what);
    cJSON *r = cJSON_ParseWithLength(json, len);
    if (!r)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: not valid JSON", what);
    if (!cJSON_IsObject(r)) {
        cJSON_Delete(r);
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: JSON is not an object", what);
    }
    *root = r;
    return DDPM_OK;
}

/* An array of block type strings: flags[i] = 1 for the attention type, 0 for the plain one. */
static ddpm_result read_block_types(const char *what, const cJSON *obj, const char *key, const char *plain,
                                    const char *attn, int *flags, int *count)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return DDPM_OK;
    if (!cJSON_IsArray(v))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\" must be an array of strings", what, key);
    int n = cJSON_GetArraySize(v);
    if (n < 1 || n > DDPM_MAX_LEVELS)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"%s\" has %d entries (1..%d supported)", what, key, n,
                         DDPM_MAX_LEVELS);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e) || !e->valuestring)
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"%s\"[%d] must be a string", what, key, i);
        if (strcmp(e->valuestring, plain) == 0)
            flags[i] = 0;
        else if (strcmp(e->valuestring, attn) == 0)
            flags[i] = 1;
        else
            return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                             "%s: unsupported block type \"%.64s\" in %s (supported: %s, %s)", what,
                             e->valuestring, key, plain, attn);
        i++;
    }
    *count = n;
    return DDPM_OK;
}

/* sample_size: an integer, or [height, width] with height == width. */
static ddpm_result read_sample_size(const char *what, const cJSON *obj, int *out)
{
    const cJSON *v = get(obj, "sample_size");
    if (!v)
        return DDPM_OK;
    if (cJSON_IsNull(v))
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: \"sample_size\" is null; the image size must be known",
                         what);
    if (!cJSON_IsArray(v))
        return read_int(what, obj, "sample_size", out);
    int hw[2];
    if (cJSON_GetArraySize(v) != 2 || !as_int(cJSON_GetArrayItem(v, 0), &hw[0]) ||
        !as_int(cJSON_GetArrayItem(v, 1), &hw[1]))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"sample_size\" must be an integer or [height, width]", what);
    if (hw[0] != hw[1])
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: non-square sample_size [%d, %d] is not supported", what,
                         hw[0], hw[1]);
    *out = hw[0];
    return DDPM_OK;
}

static ddpm_result read_channels(const char *what, const cJSON *obj, ddpm_unet_config *t)
{
    const cJSON *v = get(obj, "block_out_channels");
    if (!v)
        return DDPM_OK;
    if (!cJSON_IsArray(v))
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: \"block_out_channels\" must be an array of integers", what);
    int n = cJSON_GetArraySize(v);
    if (n < 1 || n > DDPM_MAX_LEVELS)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: %d levels in block_out_channels (1..%d supported)", what,
                         n, DDPM_MAX_LEVELS);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!as_int(e, &t->block_out_channels[i]))
            return ddpm_fail(DDPM_ERR_FORMAT, "%s: block_out_channels[%d] must be an integer", what, i);
        i++;
    }
    for (; i < DDPM_MAX_LEVELS; i++)
        t->block_out_channels[i] = 0;
    t->levels = n;
    return DDPM_OK;
}

ddpm_result unet_config_from_json(const char *json, size_t len, ddpm_unet_config *c)
{
    static const char *const what = "model config";
    ddpm_result res = DDPM_OK;
    ddpm_unet_config t;
    unet_config_default(&t);
    cJSON *root;
    TRY(parse_object(what, json, len, &root));

    const cJSON *v = get(root, "_class_name");
    if (v && !(cJSON_IsString(v) && v->valuestring && strcmp(v->valuestring, "UNet2DModel") == 0)) {
        res = ddpm_fail(DDPM_ERR_UNSUPPORTED, "%s: _class_name \"%.64s\" is not UNet2DModel", what,
                        cJSON_IsString(v) && v->valuestring ? v->valuestring : "?");
        goto cleanup;
    }
    TRY(read_int(what, root, "in_channels", &t.in_channels));
    TRY(read_int(what, root, "out_channels", &t.out_channels));
    TRY(read_sample_size(what, root, &t.sample_size));
    TRY(read_int(what, root, "layers_per_block", &t.layers_per_block));
    TRY(read_int(what, root, "norm_num_groups", &t.norm_num_groups));
    TRY(read_float(what, root, "norm_eps", &t.norm_eps));
    TRY(read_int(what, root, "downsample_padding", &t.downsample_padding));
    TRY(read_float(what, root, "freq_shift", &t.freq_shift));
    TRY(read_bool(what, root, "flip_sin_to_cos", &t.flip_sin_to_cos));
    TRY(read_float(what, root, "mid_block_scale_factor", &t.mid_block_scale_factor));
    TRY(read_bool(what, root, "add_attention", &t.mid_attn));

    /* block_out_channels decides the level count; both block type lists must have as many entries
     * (a list left out keeps the default's four entries, as diffusers would) */
    int n_down = t.levels, n_up = t.levels;
    int down[DDPM_MAX_LEVELS], up[DDPM_MAX_LEVELS];
    memcpy(down, t.down_attn, sizeof down);
    memcpy(up, t.up_attn, sizeof up);
    TRY(read_channels(what, root, &t));
    TRY(read_block_types(what, root, "down_block_types", "DownBlock2D", "AttnDownBlock2D", down, &n_down));
    TRY(read_block_types(what, root, "up_block_types", "UpBlock2D", "AttnUpBlock2D", up, &n_up));
    if (n_down != t.levels || n_up != t.levels) {
        res = ddpm_fail(DDPM_ERR_MODEL,
                        "%s: %d block_out_channels but %d down_block_types and %d up_block_types", what,
                        t.levels, n_down, n_up);
        goto cleanup;
    }
    for (int i = 0; i < DDPM_MAX_LEVELS; i++) {
        t.down_attn[i] = i < t.levels ? down[i] : 0;
        t.up_attn[i] = i < t.levels ? up[i] : 0;
    }

    /* attention_head_dim: null (one head over all channels) or a positive integer */
    v = get(root, "attention_head_dim");
    if (v && cJSON_IsNull(v))
        t.attention_head_dim = 0;
    else if (v) {
        TRY(read_int(what, root, "attention_head_dim", &t.attention_head_dim));
        if (t.attention_head_dim < 1) {
            res = ddpm_fail(DDPM_ERR_MODEL, "%s: attention_head_dim %d must be null or >= 1", what,
                            t.attention_head_dim);
            goto cleanup;
        }
    }

    /* values that must be as DDPM models use them */
    TRY(require_string(what, root, "act_fn", "silu"));
    TRY(require_string(what, root, "time_embedding_type", "positional"));
    TRY(require_string(what, root, "resnet_time_scale_shift", "default"));
    TRY(require_string(what, root, "downsample_type", "conv"));
    TRY(require_string(what, root, "upsample_type", "conv"));
    TRY(require_string(what, root, "mid_block_type", "UNetMidBlock2D"));
    TRY(require_false(what, root, "center_input_sample"));
    TRY(require_false(what, root, "attention_legacy_order"));
    TRY(require_null(what, root, "class_embed_type"));
    TRY(require_null(what, root, "num_class_embeds"));
    TRY(require_null_or(what, root, "attn_norm_num_groups", t.norm_num_groups));
    int temb = t.block_out_channels[0] > 0 && t.block_out_channels[0] <= INT_MAX / 4
                   ? 4 * t.block_out_channels[0]
                   : 0;
    TRY(require_null_or(what, root, "time_embedding_dim", temb));
    *c = t;
cleanup:
    cJSON_Delete(root);
    return res;
}

static const char *const beta_names[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "quad", "sigmoid"};
static const char *const variance_names[] = {"fixed_small", "fixed_large"};
static const char *const prediction_names[] = {"epsilon", "sample", "v_prediction"};

ddpm_result schedule_config_from_json(const char *json, size_t len, ddpm_schedule_config *s)
{
    static const char *const what = "scheduler config";
    ddpm_result res = DDPM_OK;
    ddpm_schedule_config t;
    schedule_config_default(&t);
    cJSON *root;
    TRY(parse_object(what, json, len, &root));
    int beta = (int)t.beta_schedule, var = (int)t.variance_type, pred = (int)t.prediction_type;
    TRY(read_enum(what, root, "beta_schedule", beta_names, (int)DDPM_ARRAY_LEN(beta_names), &beta));
    TRY(read_enum(what, root, "variance_type", variance_names, (int)DDPM_ARRAY_LEN(variance_names), &var));
    TRY(read_enum(what, root, "prediction_type", prediction_names, (int)DDPM_ARRAY_LEN(prediction_names),
                  &pred));
    TRY(read_double(what, root, "beta_start", &t.beta_start));
    TRY(read_double(what, root, "beta_end", &t.beta_end));
    TRY(read_int(what, root, "num_train_timesteps", &t.num_train_timesteps));
    TRY(read_bool(what, root, "clip_sample", &t.clip_sample));
    TRY(read_double(what, root, "clip_sample_range", &t.clip_sample_range));
    TRY(read_int(what, root, "steps_offset", &t.steps_offset));
    TRY(read_bool(what, root, "set_alpha_to_one", &t.set_alpha_to_one));
    /* features that would change the numbers and that this sampler does not implement */
    TRY(require_null(what, root, "trained_betas"));
    TRY(require_false(what, root, "thresholding"));
    TRY(require_false(what, root, "rescale_betas_zero_snr"));
    t.beta_schedule = (ddpm_beta_kind)beta;
    t.variance_type = (ddpm_variance)var;
    t.prediction_type = (ddpm_prediction)pred;
    *s = t;
cleanup:
    cJSON_Delete(root);
    return res;
}

/* ---- JSON writing ----------------------------------------------------------------------------- */

/* The shortest decimal that reads back as the same float, as a double (so 1e-6f prints "1e-06"). */
static double float_as_short_double(float f)
{
    char buf[48];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    return (double)f;
}

static int add_number(cJSON *obj, const char *key, double v)
{
    return cJSON_AddNumberToObject(obj, key, v) != NULL;
}

static char *print_and_free(cJSON *root, int ok)
{
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return NULL;
    /* cJSON allocates with its hooks (malloc by default); hand back a plain malloc'ed copy */
    size_t n = strlen(text);
    char *out = malloc(n + 1);
    if (out)
        memcpy(out, text, n + 1);
    cJSON_free(text);
    return out;
}

char *unet_config_to_json(const ddpm_unet_config *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    int levels = c->levels < 0 ? 0 : c->levels > DDPM_MAX_LEVELS ? DDPM_MAX_LEVELS : c->levels;
    int ok = cJSON_AddStringToObject(root, "_class_name", "UNet2DModel") &&
             add_number(root, "in_channels", c->in_channels) &&
             add_number(root, "out_channels", c->out_channels) &&
             add_number(root, "sample_size", c->sample_size);
    cJSON *ch = ok ? cJSON_AddArrayToObject(root, "block_out_channels") : NULL;
    cJSON *down = ok ? cJSON_AddArrayToObject(root, "down_block_types") : NULL;
    cJSON *up = ok ? cJSON_AddArrayToObject(root, "up_block_types") : NULL;
    ok = ch && down && up;
    for (int i = 0; ok && i < levels; i++) {
        cJSON *a = cJSON_CreateNumber(c->block_out_channels[i]);
        cJSON *b = cJSON_CreateString(c->down_attn[i] ? "AttnDownBlock2D" : "DownBlock2D");
        cJSON *d = cJSON_CreateString(c->up_attn[i] ? "AttnUpBlock2D" : "UpBlock2D");
        ok = a && b && d;
        if (!ok) {
            cJSON_Delete(a);
            cJSON_Delete(b);
            cJSON_Delete(d);
            break;
        }
        cJSON_AddItemToArray(ch, a);
        cJSON_AddItemToArray(down, b);
        cJSON_AddItemToArray(up, d);
    }
    ok = ok && add_number(root, "layers_per_block", c->layers_per_block) &&
         cJSON_AddBoolToObject(root, "add_attention", c->mid_attn != 0) &&
         add_number(root, "norm_num_groups", c->norm_num_groups) &&
         add_number(root, "norm_eps", float_as_short_double(c->norm_eps)) &&
         (c->attention_head_dim > 0 ? add_number(root, "attention_head_dim", c->attention_head_dim)
                                    : cJSON_AddNullToObject(root, "attention_head_dim") != NULL) &&
         add_number(root, "downsample_padding", c->downsample_padding) &&
         add_number(root, "freq_shift", float_as_short_double(c->freq_shift)) &&
         cJSON_AddBoolToObject(root, "flip_sin_to_cos", c->flip_sin_to_cos != 0) &&
         add_number(root, "mid_block_scale_factor", float_as_short_double(c->mid_block_scale_factor)) &&
         cJSON_AddStringToObject(root, "act_fn", "silu") &&
         cJSON_AddStringToObject(root, "time_embedding_type", "positional") &&
         cJSON_AddFalseToObject(root, "center_input_sample") &&
         cJSON_AddStringToObject(root, "resnet_time_scale_shift", "default") &&
         cJSON_AddStringToObject(root, "downsample_type", "conv") &&
         cJSON_AddStringToObject(root, "upsample_type", "conv") &&
         cJSON_AddNullToObject(root, "attn_norm_num_groups") &&
         cJSON_AddNullToObject(root, "class_embed_type") && cJSON_AddNullToObject(root, "num_class_embeds");
    return print_and_free(root, ok);
}

char *schedule_config_to_json(const ddpm_schedule_config *s)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    unsigned b = (unsigned)s->beta_schedule, v = (unsigned)s->variance_type, p = (unsigned)s->prediction_type;
    int ok = b < DDPM_ARRAY_LEN(beta_names) && v < DDPM_ARRAY_LEN(variance_names) &&
             p < DDPM_ARRAY_LEN(prediction_names);
    ok = ok && cJSON_AddStringToObject(root, "_class_name", "DDPMScheduler") &&
         cJSON_AddStringToObject(root, "beta_schedule", beta_names[b]) &&
         add_number(root, "beta_start", s->beta_start) && add_number(root, "beta_end", s->beta_end) &&
         add_number(root, "num_train_timesteps", s->num_train_timesteps) &&
         cJSON_AddStringToObject(root, "variance_type", variance_names[v]) &&
         cJSON_AddBoolToObject(root, "clip_sample", s->clip_sample != 0) &&
         add_number(root, "clip_sample_range", s->clip_sample_range) &&
         cJSON_AddStringToObject(root, "prediction_type", prediction_names[p]) &&
         add_number(root, "steps_offset", s->steps_offset) &&
         cJSON_AddBoolToObject(root, "set_alpha_to_one", s->set_alpha_to_one != 0) &&
         cJSON_AddNullToObject(root, "trained_betas");
    return print_and_free(root, ok);
}
