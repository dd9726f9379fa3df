/* frechet.c: Fréchet distance of Gaussians fitted to feature sets: tr((C1 C2)^(1/2)) as the sum of
 * sqrt(eig(R C2 R)) with R = C1^(1/2), both from a cyclic Jacobi eigensolver. */
#include "frechet.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void jacobi_eig(double *a, int n, double *w, double *v)
{
    for (int i = 0; i < n * n; i++)
        v[i] = (i / n == i % n) ? 1.0 : 0.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int p = 0; p < n; p++) {
            diag += a[p * n + p] * a[p * n + p];
            for (int q = p + 1; q < n; q++)
                off += a[p * n + q] * a[p * n + q];
        }
        if (off <= 1e-30 * diag || off == 0)
            break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (apq == 0)
                    continue;
                double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) { /* columns p, q */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p, q */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++)
        w[i] = a[i * n + i];
}

void mean_cov(const float *f, int n, int d, double *mu, double *cov)
{
    for (int j = 0; j < d; j++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += f[(size_t)i * d + j];
        mu[j] = s / n;
    }
    for (int j = 0; j < d; j++)
        for (int k = j; k < d; k++) {
            double s = 0;
            for (int i = 0; i < n; i++)
                s += (f[(size_t)i * d + j] - mu[j]) * (f[(size_t)i * d + k] - mu[k]);
            cov[j * d + k] = cov[k * d + j] = s / (n - 1);
        }
}

static void matmul(const double *a, const double *b, double *c, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++)
                s += a[i * n + k] * b[k * n + j];
            c[i * n + j] = s;
        }
}

double frechet_gauss(const double *mu1, const double *c1, const double *mu2, const double *c2, int d)
{
    size_t nn = (size_t)d * d;
    double *t = calloc(nn, sizeof(double)), *v = calloc(nn, sizeof(double)), *r = calloc(nn, sizeof(double));
    double *m = calloc(nn, sizeof(double)), *w = calloc((size_t)d, sizeof(double));
    double res = NAN;
    if (!t || !v || !r || !m || !w)
        goto done;
    double dist = 0, tr = 0;
    for (int j = 0; j < d; j++) {
        dist += (mu1[j] - mu2[j]) * (mu1[j] - mu2[j]);
        tr += c1[j * d + j] + c2[j * d + j];
    }
    memcpy(t, c1, sizeof(double) * nn); /* R = V sqrt(max(W, 0)) V^T */
    jacobi_eig(t, d, w, v);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++)
                s += v[i * d + k] * sqrt(w[k] > 0 ? w[k] : 0) * v[j * d + k];
            r[i * d + j] = s;
        }
    matmul(r, c2, t, d);
    matmul(t, r, m, d);
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++)
            m[i * d + j] = m[j * d + i] = 0.5 * (m[i * d + j] + m[j * d + i]);
    jacobi_eig(m, d, w, v);
    double trs = 0;
    for (int i = 0; i < d; i++)
        trs += sqrt(w[i] > 0 ? w[i] : 0);
    res = dist + tr - 2 * trs;
done:
    free(t), free(v), free(r), free(m), free(w);
    return res;
}

double frechet_distance(const float *fa, int na, const float *fb, int nb, int d)
{
    size_t nn = (size_t)d * d;
    double *mu1 = malloc(sizeof(double) * (size_t)d), *mu2 = malloc(sizeof(double) * (size_t)d);
    double *c1 = malloc(sizeof(double) * nn), *c2 = malloc(sizeof(double) * nn);
    double res = NAN;
    if (mu1 && mu2 && c1 && c2) {
        mean_cov(fa, na, d, mu1, c1);
        mean_cov(fb, nb, d, mu2, c2);
        res = frechet_gauss(mu1, c1, mu2, c2, d);
    }
    free(mu1), free(mu2), free(c1), free(c2);
    return res;
}
