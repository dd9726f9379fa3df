// conv2d.comp: convolution (any k, stride, asymmetric padding) and linear layers as a tiled implicit
// GEMM: out(Co, B*Ho*Wo) = W(Co, Ci*k*k) x im2col(in), with bias, time embedding, residual, scale fused.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

// x: threads along output pixels (N), y: threads along output channels (M).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 3) const uint TK = 16; // K slice held in shared memory
// Each thread computes 4 x 4 outputs, held in vec4 registers: fixed (not specialization constants) so
// every index is known at compile time and nothing spills to scratch memory.
#define RM 4u
#define RN 4u

const uint WN = gl_WorkGroupSize.x;
const uint WM = gl_WorkGroupSize.y;
const uint TM = WM * RM;
const uint TN = WN * RN;

layout(std430, binding = 0) buffer Act { ACT_T act[]; };
layout(std430, binding = 1) readonly buffer Wt { ACT_T wt[]; };

// Mirrors vk_conv_push in src/vk/vk_internal.h.
layout(push_constant) uniform Push {
    uint in_off, in_bs, out_off, out_bs;
    uint temb_off, temb_bs, res_off, res_bs;
    uint w_off, b_off;
    uint ci, h, w, co, ho, wo;
    uint k, stride, pad_t, pad_l;
    uint n_total; // B * Ho * Wo
    uint flags;   // VK_CONV_TEMB | VK_CONV_RES | VK_CONV_SILU
    float scale;
} pc;

shared float As[TK][TM];
shared float Bs[TK][TN];

// Bias, time embedding, residual, scale and SiLU on one output, then the store.
void store_one(uint gm, float acc, uint gn, uint hw_out)
{
    if (gm >= pc.co || gn >= pc.n_total)
        return;
    uint b = gn / hw_out, p = gn % hw_out;
    float v = acc + float(wt[pc.b_off + gm]);
    if ((pc.flags & VK_CONV_TEMB) != 0u)
        v += float(act[pc.temb_off + b * pc.temb_bs + gm]);
    if ((pc.flags & VK_CONV_RES) != 0u)
        v += float(act[pc.res_off + b * pc.res_bs + gm * hw_out + p]);
    v *= pc.scale;
    if ((pc.flags & VK_CONV_SILU) != 0u)
        v = v / (1.0 + exp(-v));
    act[pc.out_off + b * pc.out_bs + gm * hw_out + p] = TO_ACT(v);
}

void store_row(uint gm, vec4 acc, uint gn, uint hw_out)
{
    store_one(gm, acc.x, gn, hw_out);
    store_one(gm, acc.y, gn + WN, hw_out);
    store_one(gm, acc.z, gn + 2u * WN, hw_out);
    store_one(gm, acc.w, gn + 3u * WN, hw_out);
}

void main()
{
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * WN + tx, nthreads = WN * WM;
    uint m0 = gl_WorkGroupID.y * TM, n0 = gl_WorkGroupID.x * TN;
    uint kk2 = pc.k * pc.k;
    uint K = pc.ci * kk2;
    uint hw_out = pc.ho * pc.wo, hw_in = pc.h * pc.w;

    vec4 acc0 = vec4(0.0), acc1 = vec4(0.0), acc2 = vec4(0.0), acc3 = vec4(0.0); // rows of M, N in xyzw

    for (uint k0 = 0u; k0 < K; k0 += TK) {
        // weights: adjacent threads read adjacent k of one row
        for (uint idx = tid; idx < TK * TM; idx += nthreads) {
            uint m = idx / TK, kk = idx % TK;
            uint gm = m0 + m, gk = k0 + kk;
            As[kk][m] = (gm < pc.co && gk < K) ? float(wt[pc.w_off + gm * K + gk]) : 0.0;
        }
        // im2col of the input: adjacent threads read adjacent pixels
        for (uint idx = tid; idx < TK * TN; idx += nthreads) {
            uint kk = idx / TN, n = idx % TN;
            uint gk = k0 + kk, gn = n0 + n;
            float v = 0.0;
            if (gk < K && gn < pc.n_total) {
                uint c = gk / kk2, r = gk % kk2;
                uint ky = r / pc.k, kx = r % pc.k;
                uint b = gn / hw_out, p = gn % hw_out;
                uint oy = p / pc.wo, ox = p % pc.wo;
                int iy = int(oy * pc.stride + ky) - int(pc.pad_t);
                int ix = int(ox * pc.stride + kx) - int(pc.pad_l);
                if (iy >= 0 && ix >= 0 && iy < int(pc.h) && ix < int(pc.w))
                    v = float(act[pc.in_off + b * pc.in_bs + c * hw_in + uint(iy) * pc.w + uint(ix)]);
            }
            Bs[kk][n] = v;
        }
        barrier();
        for (uint kk = 0u; kk < TK; kk++) {
            vec4 bv = vec4(Bs[kk][tx], Bs[kk][tx + WN], Bs[kk][tx + 2u * WN], Bs[kk][tx + 3u * WN]);
            acc0 += As[kk][ty] * bv;
            acc1 += As[kk][ty + WM] * bv;
            acc2 += As[kk][ty + 2u * WM] * bv;
            acc3 += As[kk][ty + 3u * WM] * bv;
        }
        barrier();
    }

    store_row(m0 + ty, acc0, n0 + tx, hw_out);
    store_row(m0 + ty + WM, acc1, n0 + tx, hw_out);
    store_row(m0 + ty + 2u * WM, acc2, n0 + tx, hw_out);
    store_row(m0 + ty + 3u * WM, acc3, n0 + tx, hw_out);
}
