/* test_util.c: the check library shared by the C tests (see test_util.h).
 * Failures print the location and the worst element; main returns test_summary(). */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int test_failures, test_checks;

void test_check(int ok, const char *file, int line, const char *fmt, ...)
{
    test_checks++;
    if (ok)
        return;
    test_failures++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int test_close(const char *what, const float *got, const float *want, int64_t n, float atol, float rtol)
{
    double worst = -1, worst_excess = -INFINITY;
    int64_t wi = 0;
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double tol = atol + rtol * fabs((double)want[i]);
        if (!(d <= tol)) /* catches NaN */
            ok = 0;
        double excess = isnan(d) ? INFINITY : d - tol;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = d;
            wi = i;
        }
    }
    test_checks++;
    if (!ok)
        test_failures++;
    printf("%s %s: n=%lld max|err| at [%lld] = %.3g (got %.7g want %.7g; atol %.1g rtol %.1g)\n",
           ok ? "ok  " : "FAIL", what, (long long)n, (long long)wi, worst, n ? got[wi] : 0.0,
           n ? want[wi] : 0.0, atol, rtol);
    return ok;
}

const char *test_fixture_path(const char *name)
{
    static char path[4096];
    const char *dir = getenv("DDPM_FIXTURES");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/fixtures", name);
    return path;
}

void test_open_fixture(const char *name, st_file *f)
{
    if (st_open(test_fixture_path(name), f) != DDPM_OK) {
        fprintf(stderr, "FAIL cannot open fixture %s: %s\n", name, ddpm_last_error());
        exit(1);
    }
}

float *test_tensor(const st_file *f, const char *name, int64_t *numel)
{
    const st_tensor *t = st_find(f, name);
    if (!t) {
        fprintf(stderr, "FAIL fixture tensor %s missing\n", name);
        exit(1);
    }
    float *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!d)
        exit(1);
    st_to_f32(t, d);
    if (numel)
        *numel = t->numel;
    return d;
}

int test_summary(const char *suite)
{
    printf("%s: %d checks, %d failed\n", suite, test_checks, test_failures);
    if (test_checks == 0) {
        printf("%s: no checks ran\n", suite);
        return 1;
    }
    return test_failures ? 1 : 0;
}
