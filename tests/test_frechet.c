/* test_frechet.c: ddpm-eval's Fréchet distance against closed forms: equal Gaussians (0), diagonal and
 * commuting rotated covariances (sum of (sqrt a - sqrt b)^2), and non-commuting 2x2 covariances. */
#include "../tools/eval/frechet.h"
#include "rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define D 24

static double close_to(const char *what, double got, double want, double tol)
{
    CHECK(fabs(got - want) <= tol * (1 + fabs(want)), "%s: got %.12g, want %.12g", what, got, want);
    printf("%s: %.12g (closed form %.12g)\n", what, got, want);
    return got;
}

int main(void)
{
    static double a[D * D], q[D * D], w[D], c1[D * D], c2[D * D], mu1[D], mu2[D], ev[D], evec[D * D];
    float n[4 * D * D];
    rng_normal_fill(n, 4 * D * D, 1, 0, 0, 99);
    /* a random orthogonal Q: the eigenvectors of a random symmetric matrix; check A = Q W Q^T */
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++)
            a[i * D + j] = n[i * D + j] + n[j * D + i];
    double a0[D * D], err = 0;
    memcpy(a0, a, sizeof a);
    jacobi_eig(a, D, w, q);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int k = 0; k < D; k++)
                s += q[i * D + k] * w[k] * q[j * D + k];
            err = fmax(err, fabs(s - a0[i * D + j]));
        }
    CHECK(err < 1e-10, "Jacobi: |Q W Q^T - A| = %g", err);
    printf("jacobi: max |Q W Q^T - A| = %.3g\n", err);

    /* commuting covariances Q diag(x) Q^T, Q diag(y) Q^T: the distance is |dmu|^2 + sum (sqrt x - sqrt y)^2
     */
    double want = 0;
    for (int k = 0; k < D; k++) {
        ev[k] = 0.1 + fabs(n[D * D + k]);
        double y = 0.05 + fabs(n[D * D + D + k]);
        mu1[k] = n[2 * D * D + k];
        mu2[k] = n[2 * D * D + D + k];
        want += (mu1[k] - mu2[k]) * (mu1[k] - mu2[k]) + (sqrt(ev[k]) - sqrt(y)) * (sqrt(ev[k]) - sqrt(y));
        evec[k] = y;
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s1 = 0, s2 = 0;
            for (int k = 0; k < D; k++) {
                s1 += q[i * D + k] * ev[k] * q[j * D + k];
                s2 += q[i * D + k] * evec[k] * q[j * D + k];
            }
            c1[i * D + j] = s1;
            c2[i * D + j] = s2;
        }
    close_to("rotated commuting covariances", frechet_gauss(mu1, c1, mu2, c2, D), want, 1e-9);
    close_to("equal Gaussians", frechet_gauss(mu1, c1, mu1, c1, D), 0.0, 1e-9);

    /* 2x2, not commuting: tr sqrt(C1 C2) = sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2)) */
    double p1[4] = {2.0, 0.7, 0.7, 1.0}, p2[4] = {0.5, -0.3, -0.3, 3.0}, z[2] = {0, 0}, m2[2] = {1.0, -2.0};
    double tr12 = p1[0] * p2[0] + p1[1] * p2[2] + p1[2] * p2[1] + p1[3] * p2[3];
    double det = (p1[0] * p1[3] - p1[1] * p1[2]) * (p2[0] * p2[3] - p2[1] * p2[2]);
    double w2 = 5.0 + (p1[0] + p1[3] + p2[0] + p2[3]) - 2 * sqrt(tr12 + 2 * sqrt(det));
    close_to("2x2 non-commuting", frechet_gauss(z, p1, m2, p2, 2), w2, 1e-10);

    /* from samples: the fitted Gaussians of the same points are at distance 0; a shift by s adds |s|^2 */
    float *f = malloc(sizeof(float) * 500 * 3), *g = malloc(sizeof(float) * 500 * 3);
    rng_normal_fill(f, 500 * 3, 1, 1, 0, 99);
    for (int i = 0; i < 500 * 3; i++)
        g[i] = f[i] + (i % 3 == 1 ? 0.5f : 0.0f);
    close_to("same points", frechet_distance(f, 500, f, 500, 3), 0.0, 1e-9);
    close_to("shifted points", frechet_distance(f, 500, g, 500, 3), 0.25, 1e-6);
    free(f);
    free(g);
    return test_summary("frechet");
}
