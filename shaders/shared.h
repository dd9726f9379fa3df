/* shared.h: constants shared by the C host and the GLSL shaders (included by both).
 * Keep to #define of plain integer literals so both languages parse it. */
#ifndef DDPM_SHADERS_SHARED_H
#define DDPM_SHADERS_SHARED_H

/* Philox counter word 2 (the step) used for the initial noise x_T. */
#define DDPM_NOISE_STEP_INIT 0xFFFFFFFFu

/* One row of the per-step coefficient table (floats). With out the model output at step i:
 *   x0  = P0 * x + Q0 * out            (clamped to [-clip, clip] when CLIP != 0)
 *   eps = P1 * x + Q1 * out + R1 * x0
 *   x'  = A * x0 + B * eps + C * x + SIGMA * z      (z: Philox normal, counter (e/4, image, i)) */
#define DDPM_COEF_P0 0
#define DDPM_COEF_Q0 1
#define DDPM_COEF_P1 2
#define DDPM_COEF_Q1 3
#define DDPM_COEF_R1 4
#define DDPM_COEF_A 5
#define DDPM_COEF_B 6
#define DDPM_COEF_C 7
#define DDPM_COEF_SIGMA 8
#define DDPM_COEF_T 9     /* the model timestep, as a float */
#define DDPM_COEF_CLIP 10 /* clip range, 0 = no clipping */
#define DDPM_COEF_STRIDE 12

/* conv2d.comp flags */
#define VK_CONV_TEMB 1u
#define VK_CONV_RES 2u
#define VK_CONV_SILU 4u

/* conv2d.comp's register-tile variant (CPU devices): pixels per invocation, vec4 channel groups per
 * invocation (4 channels each) */
#define VK_CONV_REG_RP 4u
#define VK_CONV_REG_RC 2u

/* eltwise.comp modes */
#define VK_ELTWISE_SILU 0u
#define VK_ELTWISE_UPSAMPLE 1u
#define VK_ELTWISE_CAST_IN 2u  /* ext (float32) -> arena */
#define VK_ELTWISE_CAST_OUT 3u /* arena -> ext (float32) */

#endif
