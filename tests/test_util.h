/* test_util.h: a small check library for the C tests: counted checks, tolerance comparison that
 * prints the worst element, and fixture loading from $DDPM_FIXTURES. */
#ifndef DDPM_TEST_UTIL_H
#define DDPM_TEST_UTIL_H

#include "safetensors.h"
#include <stdint.h>
#include <stdio.h>

extern int test_failures, test_checks;

/* Records a check; prints FAIL with the location and message when cond is false. */
#define CHECK(cond, ...) test_check((cond) != 0, __FILE__, __LINE__, __VA_ARGS__)
void test_check(int ok, const char *file, int line, const char *fmt, ...);

/* |got - want| <= atol + rtol * |want| for all n; prints "what: max err, worst index" either way.
 * Returns 1 when close. NaN anywhere fails. */
int test_close(const char *what, const float *got, const float *want, int64_t n, float atol, float rtol);

/* Path of a fixture file (static buffer). */
const char *test_fixture_path(const char *name);
/* Opens a fixture safetensors file; aborts the test (exit 1) when it is missing. */
void test_open_fixture(const char *name, st_file *f);
/* A fixture tensor as malloc'ed float32; aborts when missing. *numel receives its size if non-NULL. */
float *test_tensor(const st_file *f, const char *name, int64_t *numel);

/* Prints "N checks, N failed" and returns the exit status for main. */
int test_summary(const char *suite);

#endif
