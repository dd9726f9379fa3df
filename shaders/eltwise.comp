// eltwise.comp: the element-wise nodes and the arena's way in and out: SiLU, nearest x2 upsample,
// and float32 <-> arena copies of the U-Net input and output (converting when the arena is fp16).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer Act { ACT_T act[]; };   // the input's activation buffer
layout(std430, binding = 1) buffer Ext { float ext[]; };            // x or model_out, float32 (n, per_image)
layout(std430, binding = 2) buffer Out { ACT_T outp[]; }; // the output's activation buffer

// Mirrors vk_eltwise_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint mode; // VK_ELTWISE_*
    uint n;    // output elements per image
    uint n_images;
    uint in_off, in_bs, out_off, out_bs;
    uint h, w; // upsample: input height and width
} pc;

// x: elements of an image (a grid-stride loop, so any size fits the group-count limit), y: images.
void main()
{
    KEEP_READ_WRITE(pc.n == 0u, act, outp)
    uint b = gl_GlobalInvocationID.y;
    if (b >= pc.n_images)
        return;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint e = gl_GlobalInvocationID.x; e < pc.n; e += stride) {
        uint o = pc.out_off + b * pc.out_bs + e;
        if (pc.mode == VK_ELTWISE_SILU) {
            float x = float(act[pc.in_off + b * pc.in_bs + e]);
            outp[o] = TO_ACT(x / (1.0 + exp(-x)));
        } else if (pc.mode == VK_ELTWISE_UPSAMPLE) {
            uint w2 = 2u * pc.w, hw2 = 4u * pc.h * pc.w;
            uint c = e / hw2, p = e % hw2;
            uint y = p / w2, x = p % w2;
            outp[o] = act[pc.in_off + b * pc.in_bs + c * pc.h * pc.w + (y / 2u) * pc.w + x / 2u];
        } else if (pc.mode == VK_ELTWISE_CAST_IN) {
            outp[o] = TO_ACT(ext[pc.in_off + b * pc.in_bs + e]);
        } else {
            ext[o] = float(act[pc.in_off + b * pc.in_bs + e]);
        }
    }
}
