// tensor.glsl: storage types of activations and weights: float32, or float16 storage (fp32 arithmetic)
// when compiled with -DDDPM_FP16; every kernel loads through float() and stores through TO_ACT().
#ifdef DDPM_FP16
#extension GL_EXT_shader_16bit_storage : require
#define ACT_T float16_t
#define TO_ACT(v) float16_t(v)
#else
#define ACT_T float
#define TO_ACT(v) (v)
#endif

// Activations of one U-Net evaluation live in one activation buffer, or several when they exceed the
// storage buffer range; a tensor is (offset, batch stride) in elements of its buffer, each image's
// (C, H, W) contiguous. The weights of a node live in one weight arena.

// A kernel reads its inputs through one binding and writes its output through another, which may be
// the same buffer. Synchronization validation judges a binding as a whole, not the ranges a node
// touches (the recorder tracks those and places the barriers), so each kernel keeps both bindings
// read-write, as the single read-write binding they replace was, with this access under a condition
// no dispatch meets (a dispatch with no work is never recorded).
#define KEEP_READ_WRITE(never, in_buf, out_buf) \
    if (never)                                  \
        in_buf[0] = out_buf[0];
