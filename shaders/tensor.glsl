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

// Activations of one U-Net evaluation live in one arena buffer; a tensor is (offset, batch stride) in
// elements, each image's (C, H, W) contiguous. The weights of a node live in one weight arena.
