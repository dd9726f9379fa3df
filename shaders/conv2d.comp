// conv2d.comp: convolution (any k, stride, asymmetric padding) and linear layers as a tiled implicit
// GEMM: out(Co, B*Ho*Wo) = W(Co, Ci*k*k) x im2col(in), with bias, time embedding, residual, scale fused.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "shared.h"
#include "tensor.glsl"

// x: threads along output pixels (N), y: threads along output channels (M).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 3) const uint RM = 4; // outputs per thread along M
layout(constant_id = 4) const uint RN = 4; // outputs per thread along N
layout(constant_id = 5) const uint TK = 16; // K slice held in shared memory

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

void main()
{
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * WN + tx, nthreads = WN * WM;
    uint m0 = gl_WorkGroupID.y * TM, n0 = gl_WorkGroupID.x * TN;
    uint kk2 = pc.k * pc.k;
    uint K = pc.ci * kk2;
    uint hw_out = pc.ho * pc.wo, hw_in = pc.h * pc.w;

    float acc[RM][RN];
    for (uint i = 0u; i < RM; i++)
        for (uint j = 0u; j < RN; j++)
            acc[i][j] = 0.0;

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
            float a[RM], bv[RN];
            for (uint i = 0u; i < RM; i++)
                a[i] = As[kk][ty + i * WM];
            for (uint j = 0u; j < RN; j++)
                bv[j] = Bs[kk][tx + j * WN];
            for (uint i = 0u; i < RM; i++)
                for (uint j = 0u; j < RN; j++)
                    acc[i][j] += a[i] * bv[j];
        }
        barrier();
    }

    for (uint j = 0u; j < RN; j++) {
        uint gn = n0 + tx + j * WN;
        if (gn >= pc.n_total)
            continue;
        uint b = gn / hw_out, p = gn % hw_out;
        for (uint i = 0u; i < RM; i++) {
            uint gm = m0 + ty + i * WM;
            if (gm >= pc.co)
                continue;
            float v = acc[i][j] + float(wt[pc.b_off + gm]);
            if ((pc.flags & VK_CONV_TEMB) != 0u)
                v += float(act[pc.temb_off + b * pc.temb_bs + gm]);
            if ((pc.flags & VK_CONV_RES) != 0u)
                v += float(act[pc.res_off + b * pc.res_bs + gm * hw_out + p]);
            v *= pc.scale;
            if ((pc.flags & VK_CONV_SILU) != 0u)
                v = v / (1.0 + exp(-v));
            act[pc.out_off + b * pc.out_bs + gm * hw_out + p] = TO_ACT(v);
        }
    }
}
