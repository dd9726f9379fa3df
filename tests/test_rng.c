/* test_rng.c: Philox4x32-10 against Random123's published known-answer vectors (kat_vectors), the
 * 24-bit uniforms, and the normals: layout, statistics, independence from how a batch is split. */
#include "rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter[4], key[2] -> output[4]. */
static void test_known_answers(void)
{
    static const struct {
        uint32_t ctr[4], key[2], want[4];
    } kat[] = {
        {{0x00000000, 0x00000000, 0x00000000, 0x00000000},
         {0x00000000, 0x00000000},
         {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t got[4];
        philox4x32_10(kat[i].ctr, kat[i].key, got);
        CHECK(memcmp(got, kat[i].want, sizeof got) == 0,
              "philox4x32_10 KAT %zu: got %08x %08x %08x %08x want %08x %08x %08x %08x", i, got[0], got[1],
              got[2], got[3], kat[i].want[0], kat[i].want[1], kat[i].want[2], kat[i].want[3]);
    }
    printf("philox4x32_10: %zu Random123 known-answer vectors compared\n", sizeof kat / sizeof kat[0]);
}

static void test_uniform24(void)
{
    CHECK(rng_uniform24(0) == 0x1p-25f, "u(0) = %a, want 2^-25", (double)rng_uniform24(0));
    CHECK(rng_uniform24(0xFF) == rng_uniform24(0), "the low 8 bits must be ignored");
    CHECK(rng_uniform24(0x100) == 1.5f * 0x1p-24f, "u(0x100) = %a", (double)rng_uniform24(0x100));
    /* Below 2^23 * 256 the value (m + 0.5) 2^-24 is exact in fp32. */
    int exact_bad = 0, range_bad = 0, order_bad = 0;
    float prev = 0.0f;
    for (uint64_t x = 0; x <= 0xFFFFFFFFu; x += 0x10001) {
        uint32_t m = (uint32_t)x >> 8;
        float u = rng_uniform24((uint32_t)x);
        if (!(u > 0.0f && u <= 1.0f))
            range_bad++;
        if (u < prev)
            order_bad++;
        prev = u;
        if (m < (1u << 23) && (double)u != ((double)m + 0.5) * 0x1p-24)
            exact_bad++;
    }
    CHECK(range_bad == 0, "uniform24 outside (0, 1]: %d values", range_bad);
    CHECK(order_bad == 0, "uniform24 not monotone: %d values", order_bad);
    CHECK(exact_bad == 0, "uniform24 inexact below 2^23: %d values", exact_bad);
    float top = rng_uniform24(0xFFFFFFFFu);
    CHECK(top > 0.99999f && top <= 1.0f, "u(0xFFFFFFFF) = %.9g", (double)top);
    printf("uniform24: range (0, 1], monotone, exact below 2^23 checked\n");
}

/* Each element follows the header's recipe: block (e/4, image, step, 0), key (seed lo, seed hi). */
static void test_normal_layout(void)
{
    const int64_t per = 11; /* not a multiple of 4: the last block is partial */
    const int n = 3, first = 7;
    const uint32_t step = 42;
    const uint64_t seed = 0x0123456789ABCDEFull;
    float *z = malloc(sizeof(float) * per * n);
    rng_normal_fill(z, per, n, first, step, seed);
    float want[33];
    for (int k = 0; k < n; k++)
        for (int64_t e = 0; e < per; e++) {
            uint32_t ctr[4] = {(uint32_t)(e / 4), (uint32_t)(first + k), step, 0};
            uint32_t key[2] = {0x89ABCDEFu, 0x01234567u};
            uint32_t w[4];
            philox4x32_10(ctr, key, w);
            int lane = (int)(e % 4);
            double ua = rng_uniform24(w[lane < 2 ? 0 : 2]);
            double ub = rng_uniform24(w[lane < 2 ? 1 : 3]);
            double r = sqrt(-2.0 * log(ua));
            double th = 2.0 * M_PI * ub;
            want[k * per + e] = (float)((lane % 2 == 0) ? r * cos(th) : r * sin(th));
        }
    test_close("normals vs the header's recipe (double)", z, want, per * n, 1e-5f, 1e-5f);
    float b4[4];
    rng_normal4(2, first + 1, step, seed, b4); /* elements 8..10 of image 1 (block 2 is partial) */
    CHECK(memcmp(b4, z + per + 8, 3 * sizeof(float)) == 0, "rng_normal4 differs from rng_normal_fill");
    free(z);
}

static void test_normal_stats(void)
{
    const int64_t N = 1000000;
    float *z = malloc(sizeof(float) * N);
    rng_normal_fill(z, N, 1, 0, 0, 12345);
    double s = 0, s2 = 0, lane_s[4] = {0}, inside = 0, s3 = 0, s4 = 0;
    for (int64_t i = 0; i < N; i++) {
        double v = z[i];
        s += v;
        s2 += v * v;
        s3 += v * v * v;
        s4 += v * v * v * v;
        lane_s[i % 4] += v;
        inside += fabs(v) < 1.0;
    }
    double mean = s / N, var = s2 / N - mean * mean, p1 = inside / N;
    /* 5-sigma bounds: sd(mean) = 1/sqrt(N), sd(var) = sqrt(2/N), sd(z^3) = sqrt(15/N), sd(z^4) = sqrt(96/N)
     */
    CHECK(fabs(mean) < 5.0 / sqrt((double)N), "mean %.6f", mean);
    CHECK(fabs(var - 1.0) < 5.0 * sqrt(2.0 / N), "variance %.6f", var);
    CHECK(fabs(s3 / N) < 5.0 * sqrt(15.0 / N), "third moment %.6f", s3 / N);
    CHECK(fabs(s4 / N - 3.0) < 5.0 * sqrt(96.0 / N), "fourth moment %.6f", s4 / N);
    double pw = 0.682689492137;
    CHECK(fabs(p1 - pw) < 5.0 * sqrt(pw * (1 - pw) / N), "P(|z| < 1) = %.6f, want %.6f", p1, pw);
    for (int l = 0; l < 4; l++)
        CHECK(fabs(lane_s[l] / (N / 4)) < 5.0 / sqrt(N / 4.0), "lane %d mean %.6f", l, lane_s[l] / (N / 4));
    /* neighbouring elements uncorrelated (the sin/cos pair shares r) */
    double c = 0;
    for (int64_t i = 0; i + 1 < N; i++)
        c += (double)z[i] * z[i + 1];
    c /= (N - 1);
    CHECK(fabs(c) < 5.0 / sqrt((double)N), "lag-1 correlation %.6f", c);
    printf("normals: %lld draws, mean %.5f, variance %.5f, P(|z|<1) %.5f, lag-1 corr %.5f\n", (long long)N,
           mean, var, p1, c);
    free(z);
}

static void test_batch_split(void)
{
    const int64_t per = 1001;
    const int n = 5;
    float *all = malloc(sizeof(float) * per * n), *one = malloc(sizeof(float) * per * n);
    rng_normal_fill(all, per, n, 0, 3, 99);
    for (int k = 0; k < n; k++)
        rng_normal_fill(one + k * per, per, 1, k, 3, 99);
    CHECK(memcmp(all, one, sizeof(float) * per * n) == 0, "5 images at once != one by one");
    /* a shard starting at image 2 */
    rng_normal_fill(one, per, 3, 2, 3, 99);
    CHECK(memcmp(all + 2 * per, one, sizeof(float) * per * 3) == 0, "images 2..4 as a shard differ");
    /* the step, the seed's high word and the image index all change the noise */
    rng_normal_fill(one, per, 1, 0, 4, 99);
    CHECK(memcmp(all, one, sizeof(float) * per) != 0, "step does not change the noise");
    rng_normal_fill(one, per, 1, 0, 3, 99 + (1ull << 32));
    CHECK(memcmp(all, one, sizeof(float) * per) != 0, "seed high word does not change the noise");
    CHECK(memcmp(all, all + per, sizeof(float) * per) != 0, "images 0 and 1 have the same noise");
    printf("normals: batch of 5 == one by one == shard from image 2 (bitwise)\n");
    free(all);
    free(one);
}

int main(void)
{
    test_known_answers();
    test_uniform24();
    test_normal_layout();
    test_normal_stats();
    test_batch_split();
    return test_summary("rng");
}
