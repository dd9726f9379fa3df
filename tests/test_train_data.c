/* test_train_data.c: ddpm-train's image resampling: identity, center crop of the longer side, area
 * averaging when shrinking, bilinear when enlarging, channel planes; and dataset_get's [-1, 1] + flip. */
#include "data.h"
#include "test_util.h"

#include <string.h>

static int same_u8(const uint8_t *got, const uint8_t *want, int n)
{
    return memcmp(got, want, (size_t)n) == 0;
}

int main(void)
{
    uint8_t dst[64];
    /* identity: interleaved RGB 2x2 -> planar */
    const uint8_t rgb[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const uint8_t planar[12] = {1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12};
    image_resize_crop(rgb, 2, 2, 3, 2, dst);
    CHECK(same_u8(dst, planar, 12), "2x2 RGB identity is a transpose to planes");
    /* 4x2 grey -> 2x2: the shorter side fits already; the center two columns stay */
    const uint8_t wide[8] = {10, 20, 30, 40, 50, 60, 70, 80}, wide_want[4] = {20, 30, 60, 70};
    image_resize_crop(wide, 4, 2, 1, 2, dst);
    CHECK(same_u8(dst, wide_want, 4), "4x2 -> 2x2 center crop: got %d %d %d %d", dst[0], dst[1], dst[2],
          dst[3]);
    /* 4x4 -> 2x2: each output is the mean of a 2x2 block */
    const uint8_t sq[16] = {0, 2, 10, 20, 4, 6, 30, 40, 100, 100, 1, 1, 200, 200, 1, 3};
    const uint8_t sq_want[4] = {3, 25, 150, 2};
    image_resize_crop(sq, 4, 4, 1, 2, dst);
    CHECK(same_u8(dst, sq_want, 4), "4x4 -> 2x2 area mean: got %d %d %d %d", dst[0], dst[1], dst[2], dst[3]);
    /* 6x4 -> 2x2: shrink by 2 (to 3x2), then crop the center column pair of 3 (offset 0) */
    const uint8_t r64[24] = {0,  0,  8,  8,  16, 16, 0,  0,  8,  8,  16, 16,
                             40, 40, 48, 48, 56, 56, 40, 40, 48, 48, 56, 56};
    const uint8_t r64_want[4] = {0, 8, 40, 48};
    image_resize_crop(r64, 6, 4, 1, 2, dst);
    CHECK(same_u8(dst, r64_want, 4), "6x4 -> 2x2: got %d %d %d %d", dst[0], dst[1], dst[2], dst[3]);
    /* 1x1 -> 3x3 and 2x2 -> 4x4: constant stays constant, a ramp stays monotonic and in range */
    const uint8_t one = 77;
    image_resize_crop(&one, 1, 1, 1, 3, dst);
    int flat = 1;
    for (int i = 0; i < 9; i++)
        flat &= dst[i] == 77;
    CHECK(flat, "1x1 -> 3x3 constant");
    const uint8_t ramp[4] = {0, 200, 0, 200};
    image_resize_crop(ramp, 2, 2, 1, 4, dst);
    CHECK(dst[0] == 0 && dst[3] == 200 && dst[1] == 50 && dst[2] == 150 && dst[4] == 0 && dst[7] == 200,
          "2x2 -> 4x4 bilinear (half-pixel centres): row %d %d %d %d", dst[0], dst[1], dst[2], dst[3]);

    /* dataset_get: p / 127.5 - 1, mirrored when flip */
    uint8_t pix[4] = {0, 255, 51, 102};
    dataset d = {.n = 1, .c = 1, .s = 2, .pix = pix};
    float x[4], f[4];
    dataset_get(&d, 0, 0, x);
    dataset_get(&d, 0, 1, f);
    const float want[4] = {-1.0f, 1.0f, 51 / 127.5f - 1, 102 / 127.5f - 1};
    const float wantf[4] = {1.0f, -1.0f, 102 / 127.5f - 1, 51 / 127.5f - 1};
    test_close("dataset_get", x, want, 4, 1e-6f, 0);
    test_close("dataset_get flipped", f, wantf, 4, 1e-6f, 0);
    return test_summary("train_data");
}
