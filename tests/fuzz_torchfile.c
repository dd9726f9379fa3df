/* fuzz_torchfile.c: libFuzzer targets for the PyTorch checkpoint reader (not part of the suite): whole files,
 * or with -DFUZZ_PICKLE the input as data.pkl in a valid zip with four storages (past the CRC check).
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined [-DFUZZ_PICKLE] -Iinclude -Isrc -Itools/convert \
 *     tests/fuzz_torchfile.c tools/convert/torchfile.c src/safetensors.c src/common.c -lm -o fuzz
 *   ./fuzz -max_total_time=300 corpus/ tests/fixtures/torchfile */
#include "torchfile.h"

#include <stdlib.h>
#include <string.h>

#ifdef FUZZ_PICKLE
static uint32_t crc32_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

static uint8_t *put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

/* archive/data.pkl = input; archive/data/0..3 = 64, 32, 16 and 8 zero-free bytes. */
static size_t build_zip(const uint8_t *pkl, size_t n, uint8_t **out)
{
    static uint8_t storage[64];
    for (int i = 0; i < 64; i++)
        storage[i] = (uint8_t)(i * 37 + 11);
    const char *names[5] = {"archive/data.pkl", "archive/data/0", "archive/data/1", "archive/data/2",
                            "archive/data/3"};
    const uint8_t *data[5] = {pkl, storage, storage, storage, storage};
    size_t sizes[5] = {n, 64, 32, 16, 8}, local[5], cap = n + 1024;
    uint8_t *z = malloc(cap), *p = z;
    if (!z)
        abort();
    for (int i = 0; i < 5; i++) {
        local[i] = (size_t)(p - z);
        size_t nl = strlen(names[i]);
        p = put_le(p, 0x04034b50u, 4);
        p = put_le(p, 20, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 4);
        p = put_le(p, crc32_bitwise(data[i], sizes[i]), 4);
        p = put_le(p, sizes[i], 4);
        p = put_le(p, sizes[i], 4);
        p = put_le(p, nl, 2);
        p = put_le(p, 0, 2);
        memcpy(p, names[i], nl);
        p += nl;
        if (sizes[i])
            memcpy(p, data[i], sizes[i]);
        p += sizes[i];
    }
    size_t cd = (size_t)(p - z);
    for (int i = 0; i < 5; i++) {
        size_t nl = strlen(names[i]);
        p = put_le(p, 0x02014b50u, 4);
        p = put_le(p, 20, 2);
        p = put_le(p, 20, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 4);
        p = put_le(p, crc32_bitwise(data[i], sizes[i]), 4);
        p = put_le(p, sizes[i], 4);
        p = put_le(p, sizes[i], 4);
        p = put_le(p, nl, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 2);
        p = put_le(p, 0, 4);
        p = put_le(p, local[i], 4);
        memcpy(p, names[i], nl);
        p += nl;
    }
    size_t cd_size = (size_t)(p - z) - cd;
    p = put_le(p, 0x06054b50u, 4);
    p = put_le(p, 0, 4);
    p = put_le(p, 5, 2);
    p = put_le(p, 5, 2);
    p = put_le(p, cd_size, 4);
    p = put_le(p, cd, 4);
    p = put_le(p, 0, 2);
    *out = z;
    return (size_t)(p - z);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf;
#ifdef FUZZ_PICKLE
    if (size > (1u << 20))
        return 0;
    size = build_zip(data, size, &buf);
#else
    buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
#endif
    st_file f;
    if (torch_parse(buf, size, "fuzz", &f) == DDPM_OK) {
        static const int sizes[] = {4, 2, 2};
        volatile uint8_t sink = 0;
        for (int i = 0; i < f.n_tensors; i++) { /* touch every byte a tensor claims */
            const st_tensor *t = &f.tensors[i];
            for (int64_t b = 0; b < t->numel * sizes[t->dtype]; b++)
                sink ^= t->data[b];
        }
        (void)sink;
        if (f.n_tensors > 0)
            torch_select(&f, "0");
        st_close(&f);
    }
    return 0;
}
