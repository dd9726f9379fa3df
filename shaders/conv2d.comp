// conv2d.comp: convolution (any k, stride, asymmetric padding) and linear layers as a tiled implicit
// GEMM: out(Co, B*Ho*Wo) = W(Co, Ci*k*k) x im2col(in), with bias, time embedding, residual, scale fused.
// GPUs: shared-memory tiles, 4x4 outputs per thread. With -DDDPM_CONV_REG (CPU devices such as
// lavapipe, whose shared-memory and gathered loads cost a scalar loop per SIMD lane): no shared memory,
// each invocation holds a 16-channel x 1-pixel register tile and every weight load is uniform across
// the workgroup (one broadcast load feeds a whole SIMD vector).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
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

// The node's reads (input, time embedding, residual) share one activation buffer; the output may sit
// in another (or the same) one.
layout(std430, binding = 0) buffer Act { ACT_T act[]; };
layout(std430, binding = 1) readonly buffer Wt { ACT_T wt[]; };
layout(std430, binding = 2) buffer Out { ACT_T outp[]; };

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

#ifndef DDPM_CONV_REG
shared float As[TK][TM];
shared float Bs[TK][TN];
shared int Koff[TK], Ky[TK], Kx[TK]; // per row of the K slice: c * H * W (-1 past K), ky, kx

#endif

// Bias, time embedding, residual, scale and SiLU on one output, then the store.
void store_one(uint gm, float acc, uint gn, uint hw_out)
{
    KEEP_READ_WRITE(pc.co == 0u, act, outp)
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
    outp[pc.out_off + b * pc.out_bs + gm * hw_out + p] = TO_ACT(v);
}

// four channels of one pixel
void store_col(uint gm, vec4 acc, uint gn, uint hw_out)
{
    store_one(gm, acc.x, gn, hw_out);
    store_one(gm + 1u, acc.y, gn, hw_out);
    store_one(gm + 2u, acc.z, gn, hw_out);
    store_one(gm + 3u, acc.w, gn, hw_out);
}

// four pixels of one channel
void store_row(uint gm, vec4 acc, uint gn, uint hw_out)
{
    store_one(gm, acc.x, gn, hw_out);
    store_one(gm, acc.y, gn + WN, hw_out);
    store_one(gm, acc.z, gn + 2u * WN, hw_out);
    store_one(gm, acc.w, gn + 3u * WN, hw_out);
}

#ifndef DDPM_CONV_REG
void main()
{
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * WN + tx, nthreads = WN * WM;
    uint m0 = gl_WorkGroupID.y * TM, n0 = gl_WorkGroupID.x * TN;
    uint kk2 = pc.k * pc.k;
    uint K = pc.ci * kk2;
    uint hw_out = pc.ho * pc.wo, hw_in = pc.h * pc.w;

    // The im2col column this thread loads is the same for every K slice (the host makes the
    // workgroup a multiple of TN): its pixel is decoded once, so the loads need no division.
    const uint R = nthreads / TN; // rows of a K slice loaded per pass
    uint ncol = tid % TN, krow = tid / TN;
    uint gn_load = n0 + ncol;
    bool col_ok = gn_load < pc.n_total;
    uint lb = gn_load / hw_out, lp = gn_load % hw_out;
    uint in_base = pc.in_off + lb * pc.in_bs;
    int iy0 = int((lp / pc.wo) * pc.stride) - int(pc.pad_t);
    int ix0 = int((lp % pc.wo) * pc.stride) - int(pc.pad_l);

    vec4 acc0 = vec4(0.0), acc1 = vec4(0.0), acc2 = vec4(0.0), acc3 = vec4(0.0); // rows of M, N in xyzw

    for (uint k0 = 0u; k0 < K; k0 += TK) {
        // the K slice's (channel offset, ky, kx), decoded once per slice
        if (tid < TK) {
            uint gk = k0 + tid;
            uint c = gk / kk2, r = gk % kk2;
            uint ky = r / pc.k;
            Koff[tid] = gk < K ? int(c * hw_in) : -1;
            Ky[tid] = int(ky);
            Kx[tid] = int(r - ky * pc.k);
        }
        // weights: adjacent threads read adjacent k of one row
        for (uint idx = tid; idx < TK * TM; idx += nthreads) {
            uint m = idx / TK, kk = idx % TK;
            uint gm = m0 + m, gk = k0 + kk;
            As[kk][m] = (gm < pc.co && gk < K) ? float(wt[pc.w_off + gm * K + gk]) : 0.0;
        }
        barrier();
        // im2col of the input: adjacent threads read adjacent pixels
        for (uint kk = krow; kk < TK; kk += R) {
            float v = 0.0;
            int koff = Koff[kk];
            int iy = iy0 + Ky[kk], ix = ix0 + Kx[kk];
            if (col_ok && koff >= 0 && iy >= 0 && ix >= 0 && iy < int(pc.h) && ix < int(pc.w))
                v = float(act[in_base + uint(koff) + uint(iy) * pc.w + uint(ix)]);
            Bs[kk][ncol] = v;
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
#else
// RP pixels per invocation (x; strided by the workgroup width so neighbours read neighbours), 4 RC output
// channels per workgroup row (y): the weights' addresses do not depend on the invocation (uniform
// loads), every input load feeds 4 RC FMAs, every weight load RP. Loads are unconditional (clamped
// address, then a select), so the loop has no divergent branch.
#define RP VK_CONV_REG_RP
#define RC VK_CONV_REG_RC
const uint NW = gl_WorkGroupSize.x;

float wload(uint gm, uint gk, uint K)
{
    return float(wt[pc.w_off + min(gm, pc.co - 1u) * K + gk]);
}

// one im2col element, zero in the padding
float xload(uint cbase, int iy, int ix)
{
    bool inside = iy >= 0 && ix >= 0 && iy < int(pc.h) && ix < int(pc.w);
    uint a = cbase + uint(clamp(iy, 0, int(pc.h) - 1)) * pc.w + uint(clamp(ix, 0, int(pc.w) - 1));
    float v = float(act[a]);
    return inside ? v : 0.0;
}

void main()
{
    uint n0 = gl_WorkGroupID.x * NW * RP + gl_LocalInvocationID.x;
    uint m0 = gl_WorkGroupID.y * 4u * RC;
    uint kk2 = pc.k * pc.k;
    uint K = pc.ci * kk2;
    uint hw_out = pc.ho * pc.wo, hw_in = pc.h * pc.w;
    uint base[RP];
    int iy0[RP], ix0[RP];
    vec4 acc[RP][RC];
    [[unroll]] for (uint j = 0u; j < RP; j++) {
        uint gn = min(n0 + j * NW, pc.n_total - 1u);
        uint b = gn / hw_out, p = gn % hw_out;
        base[j] = pc.in_off + b * pc.in_bs;
        iy0[j] = int((p / pc.wo) * pc.stride) - int(pc.pad_t);
        ix0[j] = int((p % pc.wo) * pc.stride) - int(pc.pad_l);
        [[unroll]] for (uint r = 0u; r < RC; r++)
            acc[j][r] = vec4(0.0);
    }
    uint gk = 0u;
    for (uint c = 0u; c < pc.ci; c++) {
        uint coff = c * hw_in;
        for (uint ky = 0u; ky < pc.k; ky++) {
            for (uint kx = 0u; kx < pc.k; kx++, gk++) {
                vec4 wv[RC];
                [[unroll]] for (uint r = 0u; r < RC; r++) {
                    uint m = m0 + 4u * r;
                    wv[r] = vec4(wload(m, gk, K), wload(m + 1u, gk, K), wload(m + 2u, gk, K), wload(m + 3u, gk, K));
                }
                [[unroll]] for (uint j = 0u; j < RP; j++) {
                    float v = xload(base[j] + coff, iy0[j] + int(ky), ix0[j] + int(kx));
                    [[unroll]] for (uint r = 0u; r < RC; r++)
                        acc[j][r] += v * wv[r];
                }
            }
        }
    }
    [[unroll]] for (uint j = 0u; j < RP; j++)
        [[unroll]] for (uint r = 0u; r < RC; r++)
            store_col(m0 + 4u * r, acc[j][r], n0 + j * NW, hw_out);
}
#endif
