/* bench_train.c: the speed of one training step's forward and backward on the CPU (src/cpu/train.c) for
 * the Fashion-MNIST network (ch 32, mult 1,2,2, one res block, attention at 14x14, 28x28x1). */
#include "cpu/cpu.h"
#include "cpu/train.h"
#include "model.h"
#include "rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

int main(int argc, char **argv)
{
    int B = argc > 1 ? atoi(argv[1]) : 64, iters = argc > 2 ? atoi(argv[2]) : 5;
    float dropout = argc > 3 ? (float)atof(argv[3]) : 0.0f; /* ddpm-train's default is 0 */
    if (B < 1 || iters < 1) {
        fprintf(stderr, "usage: bench_train [batch] [iterations] [dropout]\n");
        return 2;
    }
    ddpm_unet_config c;
    ddpm_schedule_config s;
    unet_config_default(&c);
    schedule_config_default(&s);
    c.in_channels = c.out_channels = 1;
    c.sample_size = 28;
    c.levels = 3;
    int ch[3] = {32, 64, 64};
    for (int i = 0; i < 3; i++) {
        c.block_out_channels[i] = ch[i];
        c.down_attn[i] = c.up_attn[i] = i == 1;
    }
    c.layers_per_block = 1;
    ddpm_model *m = NULL;
    cpu_trainer *tr = NULL;
    if (model_create_random(&c, &s, 1, 0.05f, &m) != DDPM_OK ||
        cpu_train_create(&m->graph, B, dropout, &tr) != DDPM_OK) {
        fprintf(stderr, "bench_train: %s\n", ddpm_last_error());
        return 1;
    }
    const ddpm_graph *g = &m->graph;
    int64_t n_in = B * value_numel(&g->values[g->input]);
    float *x = malloc((size_t)n_in * sizeof(float)), *t = malloc((size_t)B * sizeof(float));
    float *dout = malloc((size_t)n_in * sizeof(float));
    rng_normal_fill(x, n_in, 1, 0, 0, 5);
    rng_normal_fill(dout, n_in, 1, 0, 1, 5);
    for (int i = 0; i < B; i++)
        t[i] = (float)(i * 997 % 1000);
    float **grads = calloc((size_t)g->n_params, sizeof *grads);
    for (int i = 0; i < g->n_params; i++)
        grads[i] = calloc((size_t)g->params[i].numel, sizeof(float));
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    double tf = 0.0, tb = 0.0, cpu_f = 0.0, cpu_b = 0.0;
    for (int it = -1; it < iters; it++) { /* iteration -1 warms up */
        const float *out;
        double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        cpu_train_forward(tr, (const float *const *)m->weights, x, t, (uint64_t)it, &out);
        double t1 = now(), c1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (cpu_train_backward(tr, (const float *const *)m->weights, dout, grads) != DDPM_OK) {
            fprintf(stderr, "bench_train: %s\n", ddpm_last_error());
            return 1;
        }
        double t2 = now(), c2 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (it >= 0) {
            cpu_f += c1 - c0;
            cpu_b += c2 - c1;
            tf += t1 - t0;
            tb += t2 - t1;
        }
    }
    int64_t act = 0; /* the trainer keeps every activation of the forward */
    for (int v = 0; v < g->n_values; v++)
        act += B * value_numel(&g->values[v]) * (int64_t)sizeof(float);
    printf("bench_train: %lld params, %.1f MFLOP forward per image, batch %d, %d threads, sgemm %s, "
           "activations %.0f MiB, dropout %g\n",
           (long long)g->n_weights, (double)g->flops * 1e-6, B, threads, cpu_sgemm_backend(),
           (double)act / 1048576.0, (double)dropout);
    printf("forward  %.1f ms/step  %.1f img/s  (CPU time of all threads %.1f ms/step)\n", 1e3 * tf / iters,
           B * iters / tf, 1e3 * cpu_f / iters);
    printf("backward %.1f ms/step  %.1f img/s  (CPU time of all threads %.1f ms/step)\n", 1e3 * tb / iters,
           B * iters / tb, 1e3 * cpu_b / iters);
    printf("forward+backward %.1f img/s\n", B * iters / (tf + tb));
    for (int i = 0; i < g->n_params; i++)
        free(grads[i]);
    free(grads);
    free(x);
    free(t);
    free(dout);
    cpu_train_free(tr);
    ddpm_model_free(m);
    return 0;
}
