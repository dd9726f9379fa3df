/* test_train_step.c: two ddpm-train steps of a tiny U-Net against PyTorch autograd (fixture
 * train_step.safetensors): model output, loss and every gradient, then clip_grad_norm_ + AdamW weights. */
#include "../tools/train/adamw.h"
#include "cpu/train.h"
#include "model.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double meta_num(const st_file *f, const char *key)
{
    const char *v = st_meta_get(f, key);
    CHECK(v != NULL, "fixture metadata %s", key);
    return v ? strtod(v, NULL) : 0.0;
}

/* The fixture's tensors `prefix.<param>` laid out flat in graph param order. */
static float *flat(const st_file *f, const ddpm_graph *g, const char *prefix)
{
    float *p = calloc((size_t)g->n_weights, sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < g->n_params; i++) {
        char name[160];
        snprintf(name, sizeof name, "%s.%s", prefix, g->params[i].name);
        int64_t n = 0;
        float *t = test_tensor(f, name, &n);
        CHECK(n == g->params[i].numel, "%s: %lld elements, graph has %lld", name, (long long)n,
              (long long)g->params[i].numel);
        memcpy(p + off, t, sizeof(float) * (size_t)(n < g->params[i].numel ? n : g->params[i].numel));
        free(t);
        off += g->params[i].numel;
    }
    return p;
}

int main(void)
{
    st_file f;
    test_open_fixture("train_step.safetensors", &f);
    const char *cj = st_meta_get(&f, "ddpm.config");
    ddpm_unet_config cfg;
    CHECK(cj && unet_config_from_json(cj, strlen(cj), &cfg) == DDPM_OK, "config: %s", ddpm_last_error());
    ddpm_graph g;
    CHECK(graph_build(&cfg, &g) == DDPM_OK, "graph: %s", ddpm_last_error());
    const int64_t n = g.n_weights;
    int64_t nx = 0, nt = 0;
    float *xt = test_tensor(&f, "xt", &nx), *t = test_tensor(&f, "t", &nt),
          *target = test_tensor(&f, "target", NULL);
    float *want_out = test_tensor(&f, "out1", NULL);
    const int B = (int)nt;
    float *w = flat(&f, &g, "w0"), *g1 = flat(&f, &g, "g1"), *w1 = flat(&f, &g, "w1");
    float *g2 = flat(&f, &g, "g2"), *w2 = flat(&f, &g, "w2");
    float *grad = calloc((size_t)n, sizeof(float)), *dout = malloc(sizeof(float) * (size_t)nx);
    float **wp = calloc((size_t)g.n_params, sizeof(float *)),
          **gp = calloc((size_t)g.n_params, sizeof(float *));
    int64_t off = 0;
    for (int i = 0; i < g.n_params; i++) {
        wp[i] = w + off;
        gp[i] = grad + off;
        off += g.params[i].numel;
    }

    /* forward, loss (mean squared error against the noise) and backward, as ddpm-train computes them */
    cpu_trainer *tr = NULL;
    CHECK(cpu_train_create(&g, B, 0.0f, &tr) == DDPM_OK, "trainer: %s", ddpm_last_error());
    const float *out = NULL;
    CHECK(cpu_train_forward(tr, (const float *const *)wp, xt, t, 0, &out) == DDPM_OK, "forward: %s",
          ddpm_last_error());
    test_close("step 1 model output", out, want_out, nx, 1e-4f, 1e-4f);
    double loss = 0;
    for (int64_t e = 0; e < nx; e++) {
        float d = out[e] - target[e];
        loss += (double)d * d;
        dout[e] = (float)(2.0 / (double)nx) * d;
    }
    loss /= (double)nx;
    double want_loss = meta_num(&f, "loss1");
    CHECK(fabs(loss - want_loss) <= 1e-5 * want_loss, "loss %.8f, torch %.8f", loss, want_loss);
    printf("loss %.8f, torch %.8f\n", loss, want_loss);
    CHECK(cpu_train_backward(tr, (const float *const *)wp, dout, gp) == DDPM_OK, "backward: %s",
          ddpm_last_error());
    off = 0;
    int bad = 0;
    for (int i = 0; i < g.n_params; i++) {
        int64_t m = g.params[i].numel;
        float mx = 0;
        for (int64_t e = 0; e < m; e++)
            mx = fmaxf(mx, fabsf(g1[off + e]));
        char what[160];
        snprintf(what, sizeof what, "grad %s", g.params[i].name);
        bad += !test_close(what, grad + off, g1 + off, m, 1e-4f * mx + 1e-7f, 2e-3f);
        off += m;
    }
    CHECK(bad == 0, "%d of %d parameter gradients differ from torch autograd", bad, g.n_params);

    /* clip + AdamW on torch's gradients reproduce torch's weights after each step */
    adamw_opts o = {meta_num(&f, "lr"), meta_num(&f, "beta1"), meta_num(&f, "beta2"), meta_num(&f, "eps"),
                    meta_num(&f, "weight_decay")};
    double max_norm = meta_num(&f, "max_norm");
    float *m1 = calloc((size_t)n, sizeof(float)), *v1 = calloc((size_t)n, sizeof(float));
    float *gs[2] = {g1, g2}, *ws[2] = {w1, w2};
    for (int s = 0; s < 2; s++) {
        char key[16], what[64];
        snprintf(key, sizeof key, "norm%d", s + 1);
        double norm = grad_global_norm(gs[s], n), want_norm = meta_num(&f, key);
        CHECK(fabs(norm - want_norm) <= 1e-5 * want_norm, "step %d grad norm %.8f, torch %.8f", s + 1, norm,
              want_norm);
        grad_clip(gs[s], n, norm, max_norm);
        adamw_step(w, gs[s], m1, v1, n, s + 1, &o);
        snprintf(what, sizeof what, "weights after AdamW step %d", s + 1);
        test_close(what, w, ws[s], n, 1e-6f, 1e-5f);
    }
    /* without clipping and weight decay the first step lands elsewhere: the fixture sees both */
    float *w_noclip = flat(&f, &g, "w0"), *g_raw = flat(&f, &g, "g1");
    float *m0 = calloc((size_t)n, sizeof(float)), *v0 = calloc((size_t)n, sizeof(float));
    o.weight_decay = 0;
    adamw_step(w_noclip, g_raw, m0, v0, n, 1, &o);
    double diff = 0;
    for (int64_t e = 0; e < n; e++)
        diff = fmax(diff, fabs(w_noclip[e] - w1[e]));
    CHECK(diff > 1e-4, "clip + weight decay change step 1 (max diff %g)", diff);

    cpu_train_free(tr);
    graph_free(&g);
    st_close(&f);
    free(xt), free(t), free(target), free(want_out), free(w), free(g1), free(w1), free(g2), free(w2);
    free(grad), free(dout), free(wp), free(gp), free(m1), free(v1), free(w_noclip), free(g_raw), free(m0),
        free(v0);
    return test_summary("train_step");
}
