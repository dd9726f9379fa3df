/* gemm.c: single-precision matrix multiply for the CPU backward (and anything else that wants one):
 * OpenBLAS's cblas_sgemm when the build found it (DDPM_HAVE_CBLAS), else a cache-blocked C version. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#ifdef DDPM_HAVE_CBLAS
#include <cblas.h>
#include <pthread.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#else
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

const char *cpu_sgemm_backend(void)
{
#ifdef DDPM_HAVE_CBLAS
    return "cblas";
#else
    return "portable";
#endif
}

/* Block sizes of the portable path: a task owns a GEMM_MC x GEMM_NC block of C and walks K in steps of
 * GEMM_KC, packing op(A) (MC x KC) and op(B) (KC x NC) row-major so the inner loop is contiguous. */
#define GEMM_MC 64
#define GEMM_NC 256
#define GEMM_KC 128

/* C block (mn x nn, ldc) += alpha * Ap (mn x kn) Bp (kn x nn), four rows of C at a time. */
static void gemm_block(int mn, int nn, int kn, float alpha, const float *Ap, const float *Bp, float *C,
                       int ldc)
{
    int i = 0;
    for (; i + 4 <= mn; i += 4) {
        float *c0 = C + (size_t)i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        float acc[4][GEMM_NC];
        memset(acc, 0, sizeof acc);
        for (int k = 0; k < kn; k++) {
            const float *b = Bp + (size_t)k * nn;
            float a0 = Ap[(size_t)i * kn + k], a1 = Ap[(size_t)(i + 1) * kn + k];
            float a2 = Ap[(size_t)(i + 2) * kn + k], a3 = Ap[(size_t)(i + 3) * kn + k];
            for (int j = 0; j < nn; j++) {
                acc[0][j] += a0 * b[j];
                acc[1][j] += a1 * b[j];
                acc[2][j] += a2 * b[j];
                acc[3][j] += a3 * b[j];
            }
        }
        for (int j = 0; j < nn; j++) {
            c0[j] += alpha * acc[0][j];
            c1[j] += alpha * acc[1][j];
            c2[j] += alpha * acc[2][j];
            c3[j] += alpha * acc[3][j];
        }
    }
    for (; i < mn; i++) {
        float acc[GEMM_NC];
        memset(acc, 0, sizeof acc);
        for (int k = 0; k < kn; k++) {
            const float *b = Bp + (size_t)k * nn;
            float a = Ap[(size_t)i * kn + k];
            for (int j = 0; j < nn; j++)
                acc[j] += a * b[j];
        }
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < nn; j++)
            c[j] += alpha * acc[j];
    }
}

/* The portable sgemm: the reference the cblas path is tested against, and the fallback. */
void cpu_sgemm_portable(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc);

void cpu_sgemm_portable(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (beta != 1.0f)
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        }
    if (K <= 0 || alpha == 0.0f)
        return;
    int mb = (M + GEMM_MC - 1) / GEMM_MC, nb = (N + GEMM_NC - 1) / GEMM_NC;
    int64_t tasks = (int64_t)mb * nb;
#pragma omp parallel if ((int64_t)M * N * K > (1 << 18))
    {
        float *Ap = malloc(sizeof(float) * GEMM_MC * GEMM_KC);
        float *Bp = malloc(sizeof(float) * GEMM_KC * GEMM_NC);
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) {
            int i0 = (int)(t / nb) * GEMM_MC, j0 = (int)(t % nb) * GEMM_NC;
            int mn = M - i0 < GEMM_MC ? M - i0 : GEMM_MC, nn = N - j0 < GEMM_NC ? N - j0 : GEMM_NC;
            if (!Ap || !Bp) { /* no scratch: the plain triple loop on this block */
                for (int i = i0; i < i0 + mn; i++)
                    for (int j = j0; j < j0 + nn; j++) {
                        float s = 0.0f;
                        for (int k = 0; k < K; k++)
                            s += (transa ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                                 (transb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                        C[(size_t)i * ldc + j] += alpha * s;
                    }
                continue;
            }
            for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
                int kn = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
                for (int i = 0; i < mn; i++)
                    for (int k = 0; k < kn; k++)
                        Ap[(size_t)i * kn + k] =
                            transa ? A[(size_t)(k0 + k) * lda + i0 + i] : A[(size_t)(i0 + i) * lda + k0 + k];
                if (transb) {
                    for (int j = 0; j < nn; j++)
                        for (int k = 0; k < kn; k++)
                            Bp[(size_t)k * nn + j] = B[(size_t)(j0 + j) * ldb + k0 + k];
                } else {
                    for (int k = 0; k < kn; k++)
                        memcpy(Bp + (size_t)k * nn, B + (size_t)(k0 + k) * ldb + j0,
                               (size_t)nn * sizeof(float));
                }
                gemm_block(mn, nn, kn, alpha, Ap, Bp, C + (size_t)i0 * ldc + j0, ldc);
            }
        }
        free(Ap);
        free(Bp);
    }
}

#ifdef DDPM_HAVE_CBLAS
static void blas_single_thread(void)
{
    openblas_set_num_threads(1);
}

static void sgemm_cblas(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}
#endif

void cpu_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
#ifdef DDPM_HAVE_CBLAS
    /* OpenBLAS runs single-threaded inside OpenMP's threads: its own pool would compete with OpenMP's
     * for the same cores (both spin while waiting), which made the backward several times slower. Each
     * thread multiplies a slice of C's columns (or rows, when C is tall). */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, blas_single_thread);
    int nt = 1;
#ifdef _OPENMP
    int64_t work = (int64_t)M * N * (K > 0 ? K : 1);
    nt = work > (1 << 20) && !omp_in_parallel() ? omp_get_max_threads() : 1;
#endif
    if (nt <= 1) {
        sgemm_cblas(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int by_cols = N >= M;
    int len = by_cols ? N : M, step = (len + nt - 1) / nt;
    step = by_cols ? (step + 15) / 16 * 16 : step;
#pragma omp parallel for num_threads(nt)
    for (int s0 = 0; s0 < len; s0 += step) {
        int n = len - s0 < step ? len - s0 : step;
        if (by_cols)
            sgemm_cblas(transa, transb, M, n, K, alpha, A, lda, transb ? B + (size_t)s0 * ldb : B + s0, ldb,
                        beta, C + s0, ldc);
        else
            sgemm_cblas(transa, transb, n, N, K, alpha, transa ? A + s0 : A + (size_t)s0 * lda, lda, B, ldb,
                        beta, C + (size_t)s0 * ldc, ldc);
    }
#else
    cpu_sgemm_portable(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}
