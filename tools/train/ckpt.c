/* ckpt.c: checkpoint files of ddpm-train, written with the library's safetensors writer (atomic) and read
 * back with its hostile-input reader; a checkpoint of another config is refused by name. */
#include "ckpt.h"

#include "safetensors.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_FORMAT "ddpm-train checkpoint 1"

ddpm_result ckpt_save(const char *path, const train_state *s, const char *config, const char *unet_json,
                      const char *sched_json, int64_t epoch, int64_t position)
{
    st_out_tensor t[4] = {
        {"weights", 1, {s->n, 0, 0, 0}, s->weights},
        {"ema", 1, {s->n, 0, 0, 0}, s->ema},
        {"adam_m", 1, {s->n, 0, 0, 0}, s->adam_m},
        {"adam_v", 1, {s->n, 0, 0, 0}, s->adam_v},
    };
    char step[32], loss[64], secs[64], ep[32], pos[32];
    snprintf(step, sizeof step, "%" PRId64, s->step);
    snprintf(loss, sizeof loss, "%a", s->loss_avg);
    snprintf(secs, sizeof secs, "%.3f", s->seconds);
    snprintf(ep, sizeof ep, "%" PRId64, epoch);
    snprintf(pos, sizeof pos, "%" PRId64, position);
    st_meta meta[] = {
        {(char *)"format", (char *)CKPT_FORMAT},
        {(char *)"ddpm.train", (char *)config},
        {(char *)"ddpm.config", (char *)unet_json},
        {(char *)"ddpm.scheduler", (char *)sched_json},
        {(char *)"step", step},
        {(char *)"loss_avg", loss},
        {(char *)"seconds", secs},
        {(char *)"epoch", ep},
        {(char *)"position", pos},
    };
    return st_write(path, t, 4, meta, (int)DDPM_ARRAY_LEN(meta), ST_F32);
}

/* Line `k` (0-based) of text: its start and length. */
static const char *nth_line(const char *text, int k, int *len)
{
    const char *p = text;
    for (int i = 0; i < k && p; i++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    if (!p)
        p = "";
    *len = (int)strcspn(p, "\n");
    return p;
}

/* Names the first config line that differs; long lines (the model JSON) are shown from their key up to
 * a little past the first differing character. */
static ddpm_result config_diff(const char *path, const char *have, const char *want)
{
    int line = 0;
    for (const char *a = have, *b = want; *a && *a == *b; a++, b++)
        if (*a == '\n')
            line++;
    int la, lb;
    const char *pa = nth_line(have, line, &la), *pb = nth_line(want, line, &lb);
    int same = 0;
    while (same < la && same < lb && pa[same] == pb[same])
        same++;
    int key = (int)strcspn(pa, "=\n") + 1, from = same > 60 ? same - 40 : 0, to = same + 20;
    if (la <= 100 && lb <= 100) /* short lines whole */
        from = 0, to = 100;
    char ca[160], cb[160];
    snprintf(ca, sizeof ca, "%.*s%s%.*s%s", from ? key : 0, pa, from ? "..." : "", (la < to ? la : to) - from,
             pa + from, la > to ? "..." : "");
    snprintf(cb, sizeof cb, "%.*s%s%.*s%s", from ? key : 0, pb, from ? "..." : "", (lb < to ? lb : to) - from,
             pb + from, lb > to ? "..." : "");
    return ddpm_fail(DDPM_ERR_ARG, "%s: checkpoint of another config: it has '%s', this run has '%s'", path,
                     ca, cb);
}

static ddpm_result get_f32(const st_file *f, const char *path, const char *name, int64_t n, float *dst)
{
    const st_tensor *t = st_find(f, name);
    if (!t || t->dtype != ST_F32 || t->ndim != 1 || t->numel != n)
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: checkpoint tensor '%s' is missing or not F32[%" PRId64 "]",
                         path, name, n);
    st_to_f32(t, dst);
    return DDPM_OK;
}

static ddpm_result get_num(const st_file *f, const char *path, const char *key, double *out, int hex)
{
    const char *v = st_meta_get(f, key);
    char *end = NULL;
    if (v)
        *out = strtod(v, &end);
    if (!v || end == v || *end != '\0')
        return ddpm_fail(DDPM_ERR_FORMAT, "%s: checkpoint metadata '%s' is missing or not a %s", path, key,
                         hex ? "number" : "count");
    return DDPM_OK;
}

ddpm_result ckpt_load(const char *path, train_state *s, const char *config)
{
    st_file f;
    ddpm_result res = st_open(path, &f);
    if (res != DDPM_OK)
        return res;
    const char *fmt = st_meta_get(&f, "format");
    const char *cfg = st_meta_get(&f, "ddpm.train");
    double step = 0;
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0 || !cfg) {
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: not a ddpm-train checkpoint", path);
        goto cleanup;
    }
    if (strcmp(cfg, config) != 0) {
        res = config_diff(path, cfg, config);
        goto cleanup;
    }
    TRY(get_num(&f, path, "step", &step, 0));
    if (step < 0 || step > 1e15 || step != (double)(int64_t)step) {
        res = ddpm_fail(DDPM_ERR_FORMAT, "%s: bad checkpoint step", path);
        goto cleanup;
    }
    s->step = (int64_t)step;
    TRY(get_num(&f, path, "loss_avg", &s->loss_avg, 1));
    TRY(get_num(&f, path, "seconds", &s->seconds, 1));
    TRY(get_f32(&f, path, "weights", s->n, s->weights));
    TRY(get_f32(&f, path, "ema", s->n, s->ema));
    TRY(get_f32(&f, path, "adam_m", s->n, s->adam_m));
    TRY(get_f32(&f, path, "adam_v", s->n, s->adam_v));
cleanup:
    st_close(&f);
    return res;
}
