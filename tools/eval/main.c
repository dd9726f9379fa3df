/* main.c: ddpm-eval: a small Fashion-MNIST CNN classifier trained with the library's CPU ops (forward and
 * backward), its test accuracy, and for sampled images the class histogram and the Fréchet distance. */
#include "adamw.h"
#include "data.h"
#include "frechet.h"

#include "cpu/cpu.h"
#include "npy.h"
#include "rng.h"
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define N_CLASSES 10
#define FEAT 64
#define FLAT (64 * 7 * 7) /* conv3's output, flattened */
#define REF_SPLIT 1000    /* test images [0, 1000) are the held-out real set, [1000, N) the reference */

static const char *const class_names[N_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

static const char usage[] =
    "usage: ddpm-eval train --out CLASSIFIER.safetensors [--epochs N] [--seed N] [--data DIR]\n"
    "       ddpm-eval score --classifier FILE --samples SAMPLES.npy [--data DIR]\n"
    "\n"
    "train: trains a small CNN (conv 3x3 1-16, 16-32 stride 2, 32-64 stride 2, linear 3136-64, linear\n"
    "       64-10, SiLU between) on the Fashion-MNIST training set with the library's CPU forward/backward\n"
    "       and AdamW, prints its test accuracy and saves it.\n"
    "score: for samples (n, 1, 28, 28) in [-1, 1] (ddpm-vk sample --save-raw): the class histogram, and the\n"
    "       Frechet distance of their 64-d penultimate features to the test images 1000..9999, next to the "
    "same\n"
    "       distance for the 1000 held-out real test images 0..999.\n"
    "--data DIR: the IDX files (default " FMNIST ")\n";

static void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ddpm-eval: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- the network ------------------------------------------------------------------------------------- */

/* conv (Co, Ci, 3, 3) + bias per layer, then fc1 (FEAT, FLAT) and fc2 (10, FEAT); flat layout in this order.
 */
static const int conv_ci[3] = {1, 16, 32}, conv_co[3] = {16, 32, 64}, conv_stride[3] = {1, 2, 2};
static const int conv_h[4] = {28, 28, 14, 7}; /* input side of conv i, and the final side */

typedef struct net {
    float *p; /* all parameters */
    float *w[5], *b[5];
    int64_t n;
} net;

static int64_t net_layout(net *m, float *base)
{
    int64_t off = 0;
    for (int i = 0; i < 3; i++) {
        if (base)
            m->w[i] = base + off;
        off += (int64_t)conv_co[i] * conv_ci[i] * 9;
        if (base)
            m->b[i] = base + off;
        off += conv_co[i];
    }
    if (base) {
        m->w[3] = base + off;
        m->b[3] = base + off + (int64_t)FEAT * FLAT;
    }
    off += (int64_t)FEAT * FLAT + FEAT;
    if (base) {
        m->w[4] = base + off;
        m->b[4] = base + off + N_CLASSES * FEAT;
    }
    off += N_CLASSES * FEAT + N_CLASSES;
    return off;
}

/* Activations of one batch: conv outputs z[i] and their SiLU a[i], fc1's output hz and its SiLU (the
 * features), logits. */
typedef struct acts {
    float *x, *z[3], *a[3], *hz, *feat, *logits;
    int B;
} acts;

static int acts_alloc(acts *s, int B)
{
    memset(s, 0, sizeof *s);
    s->B = B;
    s->x = malloc(sizeof(float) * (size_t)B * 28 * 28);
    int ok = s->x != NULL;
    for (int i = 0; i < 3; i++) {
        size_t n = (size_t)B * conv_co[i] * conv_h[i + 1] * conv_h[i + 1];
        s->z[i] = malloc(sizeof(float) * n);
        s->a[i] = malloc(sizeof(float) * n);
        ok = ok && s->z[i] && s->a[i];
    }
    s->hz = malloc(sizeof(float) * (size_t)B * FEAT);
    s->feat = malloc(sizeof(float) * (size_t)B * FEAT);
    s->logits = malloc(sizeof(float) * (size_t)B * N_CLASSES);
    return ok && s->hz && s->feat && s->logits;
}

static void acts_free(acts *s)
{
    free(s->x);
    for (int i = 0; i < 3; i++) {
        free(s->z[i]);
        free(s->a[i]);
    }
    free(s->hz);
    free(s->feat);
    free(s->logits);
}

static void net_forward(const net *m, acts *s, int B)
{
    const float *in = s->x;
    for (int i = 0; i < 3; i++) {
        int H = conv_h[i], Ho = conv_h[i + 1];
        conv2d_forward(s->z[i], in, m->w[i], m->b[i], NULL, NULL, 1.0f, B, conv_ci[i], H, H, conv_co[i], 3,
                       conv_stride[i], 1, 1, 1, 1);
        silu_forward(s->a[i], s->z[i], (int64_t)B * conv_co[i] * Ho * Ho);
        in = s->a[i];
    }
    linear_forward(s->hz, s->a[2], m->w[3], m->b[3], B, FLAT, FEAT);
    silu_forward(s->feat, s->hz, (int64_t)B * FEAT);
    linear_forward(s->logits, s->feat, m->w[4], m->b[4], B, FEAT, N_CLASSES);
}

/* Softmax cross-entropy of the logits against labels: returns the mean loss, dlogits = d(mean)/dlogits. */
static double softmax_xent(const float *logits, const uint8_t *labels, int B, float *dlogits, int *correct)
{
    double loss = 0;
    for (int b = 0; b < B; b++) {
        const float *l = logits + b * N_CLASSES;
        float mx = l[0];
        int arg = 0;
        for (int k = 1; k < N_CLASSES; k++)
            if (l[k] > mx)
                mx = l[k], arg = k;
        double z = 0;
        for (int k = 0; k < N_CLASSES; k++)
            z += exp((double)l[k] - mx);
        loss += log(z) + mx - l[labels[b]];
        *correct += arg == labels[b];
        if (dlogits)
            for (int k = 0; k < N_CLASSES; k++)
                dlogits[b * N_CLASSES + k] =
                    (float)((exp((double)l[k] - mx) / z - (k == labels[b] ? 1.0 : 0.0)) / B);
    }
    return loss / B;
}

/* Gradients into g (same layout as the parameters), accumulating. */
static void net_backward(const net *m, net *g, acts *s, const float *dlogits, int B, float *da, float *dz)
{
    float *dfeat = calloc((size_t)B * FEAT, sizeof(float)), *dhz = calloc((size_t)B * FEAT, sizeof(float));
    if (!dfeat || !dhz) {
        free(dfeat), free(dhz);
        return;
    }
    linear_backward(dfeat, g->w[4], g->b[4], dlogits, s->feat, m->w[4], B, FEAT, N_CLASSES);
    silu_backward(dhz, dfeat, s->hz, (int64_t)B * FEAT);
    memset(da, 0, sizeof(float) * (size_t)B * FLAT);
    linear_backward(da, g->w[3], g->b[3], dhz, s->a[2], m->w[3], B, FLAT, FEAT);
    free(dfeat), free(dhz);
    for (int i = 2; i >= 0; i--) {
        int H = conv_h[i], Ho = conv_h[i + 1];
        size_t n = (size_t)B * conv_co[i] * Ho * Ho;
        memset(dz, 0, sizeof(float) * n);
        silu_backward(dz, da, s->z[i], (int64_t)n);
        size_t nin = (size_t)B * conv_ci[i] * H * H;
        if (i > 0)
            memset(da, 0, sizeof(float) * nin);
        conv2d_backward(i > 0 ? da : NULL, g->w[i], g->b[i], NULL, NULL, dz, i > 0 ? s->a[i - 1] : s->x,
                        m->w[i], 1.0f, B, conv_ci[i], H, H, conv_co[i], 3, conv_stride[i], 1, 1, 1, 1);
    }
}

/* torch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases. */
static void net_init(net *m, uint64_t seed)
{
    int64_t fan[5] = {9, 16 * 9, 32 * 9, FLAT, FEAT};
    int64_t nw[5], nb[5] = {16, 32, 64, FEAT, N_CLASSES};
    for (int i = 0; i < 3; i++)
        nw[i] = (int64_t)conv_co[i] * conv_ci[i] * 9;
    nw[3] = (int64_t)FEAT * FLAT;
    nw[4] = N_CLASSES * FEAT;
    uint32_t ctr = 0;
    for (int i = 0; i < 5; i++) {
        float bound = (float)(1.0 / sqrt((double)fan[i]));
        float *dst[2] = {m->w[i], m->b[i]};
        int64_t cnt[2] = {nw[i], nb[i]};
        for (int k = 0; k < 2; k++)
            for (int64_t e = 0; e < cnt[k]; e++) {
                uint32_t c[4] = {ctr++, 0, 0, 0xe7a1u}, key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)},
                         r[4];
                philox4x32_10(c, key, r);
                dst[k][e] = (2.0f * rng_uniform24(r[0]) - 1.0f) * bound;
            }
    }
}

/* ---- data ------------------------------------------------------------------------------------------- */

static int load_split(const char *dir, const char *split, dataset *d)
{
    char img[4096], lab[4096];
    snprintf(img, sizeof img, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lab, sizeof lab, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    if (dataset_load(img, 1, 28, d) != DDPM_OK || dataset_load_labels(lab, d) != DDPM_OK) {
        fail("%s", ddpm_last_error());
        dataset_free(d);
        return 0;
    }
    return 1;
}

static void fill_batch(const dataset *d, const int *idx, int B, acts *s, uint8_t *labels)
{
    for (int b = 0; b < B; b++) {
        dataset_get(d, idx[b], 0, s->x + (size_t)b * 28 * 28);
        labels[b] = d->labels[idx[b]];
    }
}

/* Features (n, FEAT) and predicted classes of images x (n, 1, 28, 28). */
static void net_features(const net *m, const float *x, int n, float *feat, int *pred)
{
    acts s;
    const int B = 250;
    if (!acts_alloc(&s, B))
        return;
    for (int i0 = 0; i0 < n; i0 += B) {
        int b = n - i0 < B ? n - i0 : B;
        memcpy(s.x, x + (size_t)i0 * 784, sizeof(float) * (size_t)b * 784);
        net_forward(m, &s, b);
        memcpy(feat + (size_t)i0 * FEAT, s.feat, sizeof(float) * (size_t)b * FEAT);
        for (int k = 0; k < b; k++) {
            int arg = 0;
            for (int c = 1; c < N_CLASSES; c++)
                if (s.logits[k * N_CLASSES + c] > s.logits[k * N_CLASSES + arg])
                    arg = c;
            pred[i0 + k] = arg;
        }
    }
    acts_free(&s);
}

static float *dataset_floats(const dataset *d, int first, int n)
{
    float *x = malloc(sizeof(float) * (size_t)n * 784);
    if (x)
        for (int i = 0; i < n; i++)
            dataset_get(d, first + i, 0, x + (size_t)i * 784);
    return x;
}

static double accuracy(const net *m, const dataset *test)
{
    float *x = dataset_floats(test, 0, test->n), *feat = malloc(sizeof(float) * (size_t)test->n * FEAT);
    int *pred = malloc(sizeof(int) * (size_t)test->n), ok = 0;
    if (!x || !feat || !pred) {
        free(x), free(feat), free(pred);
        return NAN;
    }
    net_features(m, x, test->n, feat, pred);
    for (int i = 0; i < test->n; i++)
        ok += pred[i] == test->labels[i];
    free(x), free(feat), free(pred);
    return (double)ok / test->n;
}

/* ---- commands ---------------------------------------------------------------------------------------- */

/* Tensor i of the classifier file: name, shape, data (w[i / 2] or b[i / 2]). */
static const char *const tensor_names[10] = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                             "conv3.weight", "conv3.bias", "fc1.weight",   "fc1.bias",
                                             "fc2.weight",   "fc2.bias"};

static int tensor_shape(int i, int64_t shape[4])
{
    int l = i / 2;
    static const int64_t fc_out[2] = {FEAT, N_CLASSES}, fc_in[2] = {FLAT, FEAT};
    memset(shape, 0, 4 * sizeof(int64_t));
    if (i % 2) {
        shape[0] = l < 3 ? conv_co[l] : fc_out[l - 3];
        return 1;
    }
    if (l < 3) {
        shape[0] = conv_co[l], shape[1] = conv_ci[l], shape[2] = shape[3] = 3;
        return 4;
    }
    shape[0] = fc_out[l - 3], shape[1] = fc_in[l - 3];
    return 2;
}

static int save_net(const char *path, const net *m, double acc, int epochs, uint64_t seed)
{
    st_out_tensor t[10];
    for (int i = 0; i < 10; i++) {
        t[i].name = tensor_names[i];
        t[i].ndim = tensor_shape(i, t[i].shape);
        t[i].data = i % 2 ? m->b[i / 2] : m->w[i / 2];
    }
    char a[32], e[32], s[32];
    snprintf(a, sizeof a, "%.4f", acc);
    snprintf(e, sizeof e, "%d", epochs);
    snprintf(s, sizeof s, "%" PRIu64, seed);
    st_meta meta[] = {{(char *)"format", (char *)"ddpm-eval classifier 2"},
                      {(char *)"test_accuracy", a},
                      {(char *)"epochs", e},
                      {(char *)"seed", s}};
    if (st_write(path, t, 10, meta, 4, ST_F32) != DDPM_OK) {
        fail("%s", ddpm_last_error());
        return 0;
    }
    return 1;
}

static int load_net(const char *path, net *m)
{
    st_file f;
    if (st_open(path, &f) != DDPM_OK) {
        fail("%s", ddpm_last_error());
        return 0;
    }
    const char *fmt = st_meta_get(&f, "format");
    int ok = fmt && strcmp(fmt, "ddpm-eval classifier 2") == 0 && f.n_tensors == 10;
    for (int i = 0; ok && i < 10; i++) {
        const st_tensor *t = st_find(&f, tensor_names[i]);
        int64_t shape[4], want = 1;
        int nd = tensor_shape(i, shape);
        for (int d = 0; d < nd; d++)
            want *= shape[d];
        ok = t && t->numel == want;
        if (ok)
            st_to_f32(t, i % 2 ? m->b[i / 2] : m->w[i / 2]);
    }
    st_close(&f);
    if (!ok)
        fail("%s: not a ddpm-eval classifier", path);
    return ok;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmd_train(const char *dir, const char *out, int epochs, uint64_t seed)
{
    dataset tr = {0}, te = {0};
    if (!load_split(dir, "train", &tr) || !load_split(dir, "t10k", &te)) {
        dataset_free(&tr);
        return 1;
    }
    net m, g;
    int64_t n = net_layout(&m, NULL);
    float *p = calloc((size_t)n, sizeof(float)), *gr = calloc((size_t)n, sizeof(float));
    float *am = calloc((size_t)n, sizeof(float)), *av = calloc((size_t)n, sizeof(float));
    const int B = 64;
    acts s;
    float *da = malloc(sizeof(float) * (size_t)B * 16 * 28 * 28),
          *dz = malloc(sizeof(float) * (size_t)B * 16 * 784);
    float *dlog = malloc(sizeof(float) * B * N_CLASSES);
    int *perm = malloc(sizeof(int) * (size_t)tr.n);
    uint8_t labels[64];
    int status = 1;
    if (!p || !gr || !am || !av || !da || !dz || !dlog || !perm || !acts_alloc(&s, B)) {
        fail("out of memory");
        goto done;
    }
    net_layout(&m, p);
    net_layout(&g, gr);
    net_init(&m, seed);
    int64_t step = 0, steps_per_epoch = tr.n / B;
    double t0 = now_s();
    for (int ep = 0; ep < epochs; ep++) {
        for (int j = 0; j < tr.n; j++)
            perm[j] = j;
        for (int j = tr.n - 1; j > 0; j--) {
            uint32_t c[4] = {(uint32_t)j, (uint32_t)ep, 0, 0xe7a2u}, key[2] = {(uint32_t)seed, 0}, r[4];
            philox4x32_10(c, key, r);
            int k = (int)(((uint64_t)r[0] * (uint64_t)(j + 1)) >> 32), tmp = perm[j];
            perm[j] = perm[k];
            perm[k] = tmp;
        }
        double loss_sum = 0;
        int correct = 0;
        for (int64_t it = 0; it < steps_per_epoch; it++) {
            fill_batch(&tr, perm + it * B, B, &s, labels);
            net_forward(&m, &s, B);
            loss_sum += softmax_xent(s.logits, labels, B, dlog, &correct);
            memset(gr, 0, sizeof(float) * (size_t)n);
            net_backward(&m, &g, &s, dlog, B, da, dz);
            /* cosine decay from 2e-3 over the whole run */
            double lr = 1e-3 * (1 + cos(M_PI * (double)step / ((double)epochs * steps_per_epoch)));
            adamw_opts o = {lr, 0.9, 0.999, 1e-8, 1e-4};
            adamw_step(p, gr, am, av, n, ++step, &o);
        }
        fprintf(stderr, "ddpm-eval: epoch %d/%d: train loss %.4f, train accuracy %.4f (%.0f s)\n", ep + 1,
                epochs, loss_sum / steps_per_epoch, (double)correct / (steps_per_epoch * B), now_s() - t0);
    }
    double acc = accuracy(&m, &te);
    printf("classifier: test accuracy %.4f on %d Fashion-MNIST test images (%d epochs, %.0f s)\n", acc, te.n,
           epochs, now_s() - t0);
    status = save_net(out, &m, acc, epochs, seed) ? 0 : 1;
done:
    acts_free(&s);
    free(p), free(gr), free(am), free(av), free(da), free(dz), free(dlog), free(perm);
    dataset_free(&tr);
    dataset_free(&te);
    return status;
}

static int cmd_score(const char *dir, const char *cls, const char *samples)
{
    dataset te = {0};
    net m;
    int64_t n = net_layout(&m, NULL);
    float *p = calloc((size_t)n, sizeof(float));
    npy_array a = {0};
    int status = 1;
    float *xr = NULL, *fs = NULL, *fr = NULL, *fh = NULL;
    int *pred = NULL;
    if (!p)
        goto done;
    net_layout(&m, p);
    if (!load_net(cls, &m) || !load_split(dir, "t10k", &te))
        goto done;
    if (npy_read(samples, &a) != DDPM_OK) {
        fail("%s", ddpm_last_error());
        goto done;
    }
    if (a.ndim != 4 || a.shape[1] != 1 || a.shape[2] != 28 || a.shape[3] != 28 || a.shape[0] < 2 ||
        a.shape[0] > 1000000) {
        fail("%s: samples must be (n, 1, 28, 28) with n >= 2", samples);
        goto done;
    }
    int ns = (int)a.shape[0], nr = te.n - REF_SPLIT;
    xr = dataset_floats(&te, 0, te.n);
    fs = malloc(sizeof(float) * (size_t)ns * FEAT);
    fr = malloc(sizeof(float) * (size_t)te.n * FEAT);
    pred = malloc(sizeof(int) * (size_t)(ns > te.n ? ns : te.n));
    if (!xr || !fs || !fr || !pred) {
        fail("out of memory");
        goto done;
    }
    net_features(&m, xr, te.n, fr, pred);
    int ok = 0;
    for (int i = 0; i < te.n; i++)
        ok += pred[i] == te.labels[i];
    printf("classifier: test accuracy %.4f on %d test images\n", (double)ok / te.n, te.n);
    net_features(&m, a.data, ns, fs, pred);
    int hist[N_CLASSES] = {0};
    for (int i = 0; i < ns; i++)
        hist[pred[i]]++;
    printf("class histogram of %d samples (uniform would be %.0f each):\n", ns, ns / 10.0);
    for (int c = 0; c < N_CLASSES; c++)
        printf("  %d %-12s %5d  %5.1f%%\n", c, class_names[c], hist[c], 100.0 * hist[c] / ns);
    fh = fr; /* held-out real: test images [0, REF_SPLIT); reference: [REF_SPLIT, n) */
    double fd_s = frechet_distance(fs, ns, fr + (size_t)REF_SPLIT * FEAT, nr, FEAT);
    double fd_r = frechet_distance(fh, REF_SPLIT, fr + (size_t)REF_SPLIT * FEAT, nr, FEAT);
    printf("Frechet distance (64-d classifier features) to %d test images: samples (%d) %.4f, held-out real "
           "test images (%d) %.4f\n",
           nr, ns, fd_s, REF_SPLIT, fd_r);
    status = 0;
done:
    free(p), free(xr), free(fs), free(fr), free(pred);
    npy_free(&a);
    dataset_free(&te);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *dir = FMNIST, *out = NULL, *cls = NULL, *samples = NULL;
    int epochs = 3;
    uint64_t seed = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fail("%s: missing value or unknown option (see ddpm-eval --help)", a);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        if (!strcmp(a, "--data"))
            dir = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--classifier"))
            cls = v;
        else if (!strcmp(a, "--samples"))
            samples = v;
        else if (!strcmp(a, "--epochs") && (epochs = (int)strtol(v, &end, 10)) >= 1 && epochs <= 1000 &&
                 !*end)
            ;
        else if (!strcmp(a, "--seed") && ((seed = strtoull(v, &end, 10)), *v >= '0' && *v <= '9' && !*end))
            ;
        else {
            fail("bad option '%s %s' (see ddpm-eval --help)", a, v);
            return 2;
        }
    }
    if (!strcmp(argv[1], "train")) {
        if (!out) {
            fail("train: --out is required");
            return 2;
        }
        return cmd_train(dir, out, epochs, seed);
    }
    if (!strcmp(argv[1], "score")) {
        if (!cls || !samples) {
            fail("score: --classifier and --samples are required");
            return 2;
        }
        return cmd_score(dir, cls, samples);
    }
    fail("unknown command '%s' (see ddpm-eval --help)", argv[1]);
    return 2;
}
