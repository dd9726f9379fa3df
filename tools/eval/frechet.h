/* frechet.h: the Fréchet distance between two sets of feature vectors (each fitted by a Gaussian), as FID
 * computes it, with a Jacobi eigensolver for the matrix square roots (double precision throughout). */
#ifndef DDPM_EVAL_FRECHET_H
#define DDPM_EVAL_FRECHET_H

/* Eigenvalues (w, n) and eigenvectors (columns of v, n x n) of the symmetric n x n matrix a (destroyed). */
void jacobi_eig(double *a, int n, double *w, double *v);

/* Mean (d) and unbiased covariance (d x d) of n row vectors f (n, d). */
void mean_cov(const float *f, int n, int d, double *mu, double *cov);

/* |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) of two Gaussians (covariances symmetric PSD). */
double frechet_gauss(const double *mu1, const double *c1, const double *mu2, const double *c2, int d);

/* The same for the Gaussians fitted to fa (na, d) and fb (nb, d); NaN when out of memory. */
double frechet_distance(const float *fa, int na, const float *fb, int nb, int d);

#endif
