/* test_vk_update.c: the noise and update shaders on a real Vulkan device (lavapipe in CI) against the
 * CPU: Philox words bit for bit, normals, and the update for DDPM/DDIM rows; validation must stay silent. */
#include "cpu/cpu.h"
#include "rng.h"
#include "sampler.h"
#include "test_util.h"
#include "vk/vk_internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static vk_context ctx;
static vk_program noise_prog;

/* Deterministic test inputs in [-2, 2) (not the generator under test). */
static uint64_t lcg_state = 0x9E3779B97F4A7C15ull;
static float test_rand(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) * (4.0 / 16777216.0) - 2.0);
}

/* Runs noise.comp once into a fresh buffer and downloads n words. */
static ddpm_result run_noise(const vk_noise_push *push, uint32_t *words)
{
    ddpm_result res = DDPM_OK;
    vk_buffer out = {0};
    size_t n = (size_t)push->per_image * push->n_images;
    TRY(vk_buffer_create(&ctx, n * 4, VK_MEM_DEVICE, "noise_out", &out));
    const vk_buffer *bufs[] = {&out};
    TRY(vk_program_bind(&ctx, &noise_prog, 0, bufs));
    VkCommandBuffer cmd;
    TRY(vk_oneshot_begin(&ctx, &cmd));
    TRY(vk_program_dispatch(&ctx, cmd, &noise_prog, 0, push, sizeof *push, (push->per_image + 3) / 4,
                            push->n_images, 1));
    vk_barrier_from_compute(cmd);
    TRY(vk_oneshot_end(&ctx));
    TRY(vk_buffer_download(&ctx, &out, 0, words, n * 4));
cleanup:
    vk_buffer_destroy(&ctx, &out);
    return res;
}

/* (a) raw Philox words from the shader against philox4x32_10 on the CPU, over many counters and keys,
 * plus the Random123 known answers (which check the CPU side as well). */
static void test_philox_raw(void)
{
    static const struct {
        uint32_t ctr[4], key[2], want[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t t = 0; t < DDPM_ARRAY_LEN(kat); t++) {
        vk_noise_push push = {4,
                              1,
                              kat[t].ctr[1],
                              kat[t].ctr[2],
                              kat[t].key[0],
                              kat[t].key[1],
                              VK_NOISE_RAW,
                              kat[t].ctr[0],
                              kat[t].ctr[3]};
        uint32_t gpu[4] = {0}, cpu[4] = {0};
        ddpm_result r = run_noise(&push, gpu);
        CHECK(r == DDPM_OK, "noise raw: %s", ddpm_last_error());
        philox4x32_10(kat[t].ctr, kat[t].key, cpu);
        CHECK(memcmp(gpu, kat[t].want, sizeof gpu) == 0,
              "philox known answer %zu on the GPU: got %08x %08x %08x %08x", t, gpu[0], gpu[1], gpu[2],
              gpu[3]);
        CHECK(memcmp(cpu, kat[t].want, sizeof cpu) == 0,
              "philox known answer %zu on the CPU: got %08x %08x %08x %08x", t, cpu[0], cpu[1], cpu[2],
              cpu[3]);
    }

    /* Counters: block (+ offset) x image x step x word 3, several keys; odd sizes cut the last block. */
    static const struct {
        uint32_t per_image, n_images, first_image, step, ctr0, ctr3;
        uint64_t seed;
    } cases[] = {
        {4000, 3, 0, 0, 0, 0, 0},
        {4000, 2, 5, DDPM_NOISE_STEP_INIT, 0, 0, 0x0123456789abcdefull},
        {13, 4, 0xfffffffeu, 999, 0, 0, 0xffffffffffffffffull},
        {1, 1, 7, 3, 0, 0, 42},
        {1024, 2, 100, 12345, 0xfffff000u, 0xdeadbeefu, 0x8000000000000001ull},
    };
    for (size_t c = 0; c < DDPM_ARRAY_LEN(cases); c++) {
        vk_noise_push push = {cases[c].per_image, cases[c].n_images,       cases[c].first_image,
                              cases[c].step,      (uint32_t)cases[c].seed, (uint32_t)(cases[c].seed >> 32),
                              VK_NOISE_RAW,       cases[c].ctr0,           cases[c].ctr3};
        size_t n = (size_t)push.per_image * push.n_images;
        uint32_t *gpu = calloc(n, 4);
        if (!gpu) {
            CHECK(0, "out of memory");
            return;
        }
        ddpm_result r = run_noise(&push, gpu);
        CHECK(r == DDPM_OK, "noise raw: %s", ddpm_last_error());
        size_t bad = 0, first_bad = 0;
        uint32_t key[2] = {push.seed_lo, push.seed_hi};
        for (uint32_t k = 0; k < push.n_images; k++)
            for (uint32_t e = 0; e < push.per_image; e += 4) {
                uint32_t ctr[4] = {e / 4 + push.raw_ctr0, push.first_image + k, push.step, push.raw_ctr3},
                         w[4];
                philox4x32_10(ctr, key, w);
                for (uint32_t j = 0; j < 4 && e + j < push.per_image; j++) {
                    size_t idx = (size_t)k * push.per_image + e + j;
                    if (gpu[idx] != w[j] && bad++ == 0)
                        first_bad = idx;
                }
            }
        printf("%s philox raw case %zu: %zu words (%u images x %u, first image %u, step %u), %zu differ\n",
               bad ? "FAIL" : "ok  ", c, n, push.n_images, push.per_image, push.first_image, push.step, bad);
        CHECK(bad == 0, "philox words differ from the CPU (first at %zu)", first_bad);
        free(gpu);
    }
}

/* (b) noise.comp normals against rng_normal_fill. Not bit-exact: the integers and the uniforms agree
 * exactly, but log, sqrt, cos and sin are evaluated by different fp32 implementations (libm vs the
 * driver's), and the shader reduces the angle to [-pi, pi) (the range Vulkan gives precision for); a
 * few ulps of |n| <= 5.8 stay below 1e-5. */
static void test_noise(void)
{
    static const struct {
        uint32_t per_image, n_images, first_image, step;
        uint64_t seed;
    } cases[] = {
        {1, 1, 0, DDPM_NOISE_STEP_INIT, 0},
        {13, 3, 2, DDPM_NOISE_STEP_INIT, 1234},
        {127 * 3, 4, 0, 17, 0xfedcba9876543210ull},
        {3 * 32 * 32, 2, 9, 0, 7},
        {65536, 1, 0, 5, 99},
    };
    for (size_t c = 0; c < DDPM_ARRAY_LEN(cases); c++) {
        vk_noise_push push = {cases[c].per_image,
                              cases[c].n_images,
                              cases[c].first_image,
                              cases[c].step,
                              (uint32_t)cases[c].seed,
                              (uint32_t)(cases[c].seed >> 32),
                              VK_NOISE_NORMAL,
                              0,
                              0};
        size_t n = (size_t)push.per_image * push.n_images;
        float *gpu = calloc(n, 4), *cpu = calloc(n, 4);
        if (!gpu || !cpu) {
            CHECK(0, "out of memory");
            free(gpu);
            free(cpu);
            return;
        }
        ddpm_result r = run_noise(&push, (uint32_t *)gpu);
        CHECK(r == DDPM_OK, "noise: %s", ddpm_last_error());
        rng_normal_fill(cpu, push.per_image, (int)push.n_images, (int)push.first_image, push.step,
                        cases[c].seed);
        size_t exact = 0;
        double mean = 0, var = 0;
        for (size_t i = 0; i < n; i++) {
            exact += gpu[i] == cpu[i];
            mean += gpu[i];
            var += (double)gpu[i] * gpu[i];
        }
        char what[160];
        snprintf(what, sizeof what, "noise normals case %zu (%u x %u, first %u, step %u; %zu/%zu bit-exact)",
                 c, push.n_images, push.per_image, push.first_image, push.step, exact, n);
        test_close(what, gpu, cpu, (int64_t)n, 1e-5f, 1e-6f);
        if (n >= 4096) { /* a coarse sanity check of the distribution itself */
            mean /= (double)n;
            var = var / (double)n - mean * mean;
            CHECK(fabs(mean) < 0.05 && fabs(var - 1) < 0.05, "noise moments: mean %g variance %g", mean, var);
        }
        free(gpu);
        free(cpu);
    }
}

/* (c) update.comp against update_cpu. The command buffer is recorded once per shape and replayed for
 * every row, the row index written into the step buffer before each submit, as the backend does. */
typedef struct update_case {
    int per_image, n_images, first_image;
    uint64_t seed;
} update_case;

static void run_update_plan(const char *label, const sampler_plan *plan, const int *rows, int n_rows)
{
    static const update_case shapes[] = {
        {1, 1, 0, 1}, {13, 2, 3, 77}, {127 * 3, 3, 1, 0xabcdef0123456789ull}, {3 * 8 * 8, 4, 0, 5}};
    for (size_t s = 0; s < DDPM_ARRAY_LEN(shapes); s++) {
        const update_case *uc = &shapes[s];
        ddpm_result res = DDPM_OK;
        size_t n = (size_t)uc->per_image * uc->n_images;
        vk_buffer x = {0}, out = {0}, coef = {0}, step = {0};
        vk_program prog = {0};
        float *x_in = malloc(n * 4), *m_out = malloc(n * 4), *want = malloc(n * 4), *got = malloc(n * 4);
        if (!x_in || !m_out || !want || !got) {
            res = ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        size_t coef_bytes = (size_t)plan->n_steps * DDPM_COEF_STRIDE * sizeof(float);
        TRY(vk_buffer_create(&ctx, n * 4, VK_MEM_DEVICE, "x", &x));
        TRY(vk_buffer_create(&ctx, n * 4, VK_MEM_DEVICE, "model_out", &out));
        TRY(vk_buffer_create(&ctx, coef_bytes, VK_MEM_DEVICE, "coef", &coef));
        TRY(vk_buffer_create(&ctx, 4, VK_MEM_HOST, "step", &step));
        TRY(vk_buffer_upload(&ctx, &coef, 0, plan->coef, coef_bytes));
        vk_program_desc desc = {
            .shader = VK_SHADER_update, .n_buffers = 4, .push_size = sizeof(vk_update_push)};
        TRY(vk_program_create(&ctx, &desc, &prog));
        const vk_buffer *bufs[] = {&x, &out, &coef, &step};
        TRY(vk_program_bind(&ctx, &prog, 0, bufs));

        VkCommandBuffer cmd = VK_NULL_HANDLE;
        TRY(vk_cmd_alloc(&ctx, &cmd));
        VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
        VK_TRY(vkBeginCommandBuffer(cmd, &bi));
        vk_barrier_to_compute(cmd);
        vk_update_push push = {(uint32_t)uc->per_image, (uint32_t)uc->n_images, (uint32_t)uc->first_image,
                               (uint32_t)uc->seed, (uint32_t)(uc->seed >> 32)};
        TRY(vk_program_dispatch(&ctx, cmd, &prog, 0, &push, sizeof push, (uint32_t)(uc->per_image + 3) / 4,
                                (uint32_t)uc->n_images, 1));
        vk_barrier_from_compute(cmd);
        VK_TRY(vkEndCommandBuffer(cmd));

        for (int r = 0; r < n_rows; r++) {
            int i = rows[r];
            for (size_t e = 0; e < n; e++) {
                x_in[e] = test_rand();
                m_out[e] = test_rand();
            }
            TRY(vk_buffer_upload(&ctx, &x, 0, x_in, n * 4));
            TRY(vk_buffer_upload(&ctx, &out, 0, m_out, n * 4));
            uint32_t row = (uint32_t)i;
            memcpy(step.mapped, &row, 4);
            TRY(vk_submit_wait(&ctx, cmd));
            TRY(vk_buffer_download(&ctx, &x, 0, got, n * 4));
            const float *cr = plan->coef + (size_t)i * DDPM_COEF_STRIDE;
            update_cpu(want, x_in, m_out, cr, uc->per_image, uc->n_images, uc->first_image, (uint32_t)i,
                       uc->seed);
            /* Same fp32 formula on both sides; they may differ by contraction into fma (a few
             * roundings of the largest intermediate, not of the result, which can cancel) and by
             * sigma * (z_gpu - z_cpu) with |dz| < 1e-5 (see test_noise). With |x|, |out| <= 2 the
             * intermediates are bounded by m0 (x0 before clipping), me (eps) and mx (the sum). */
            double m0 = 2 * (fabs(cr[DDPM_COEF_P0]) + fabs(cr[DDPM_COEF_Q0]));
            double me = 2 * (fabs(cr[DDPM_COEF_P1]) + fabs(cr[DDPM_COEF_Q1])) + fabs(cr[DDPM_COEF_R1]) * m0;
            double mx = fabs(cr[DDPM_COEF_A]) * m0 + fabs(cr[DDPM_COEF_B]) * me + 2 * fabs(cr[DDPM_COEF_C]);
            float atol = (float)(8 * FLT_EPSILON * mx + 1e-5 * fabs(cr[DDPM_COEF_SIGMA]));
            char what[200];
            snprintf(what, sizeof what, "%s row %d (t %d, sigma %.3g, clip %g) %d x %d first %d%s", label, i,
                     plan->timesteps[i], cr[DDPM_COEF_SIGMA], cr[DDPM_COEF_CLIP], uc->n_images, uc->per_image,
                     uc->first_image, ctx.direct_map ? "" : " (staging)");
            test_close(what, got, want, (int64_t)n, atol, 0);
        }
    cleanup:
        CHECK(res == DDPM_OK, "%s: %s", label, ddpm_last_error());
        vk_program_destroy(&ctx, &prog);
        vk_buffer_destroy(&ctx, &step);
        vk_buffer_destroy(&ctx, &coef);
        vk_buffer_destroy(&ctx, &out);
        vk_buffer_destroy(&ctx, &x);
        free(x_in);
        free(m_out);
        free(want);
        free(got);
    }
}

static void test_update_plans(void)
{
    ddpm_schedule_config sc;
    schedule_config_default(&sc);
    static const struct {
        const char *label;
        ddpm_sampler_kind kind;
        int steps;
        float eta;
        int clip;
        ddpm_prediction pred;
        int staging;
    } plans[] = {
        {"ddpm eps clip", DDPM_SAMPLER_DDPM, 0, 0, 1, PRED_EPSILON, 0},
        {"ddpm v noclip", DDPM_SAMPLER_DDPM, 100, 0, 0, PRED_V, 1},
        {"ddim eta0 eps clip", DDPM_SAMPLER_DDIM, 50, 0, 1, PRED_EPSILON, 0},
        {"ddim eta1 sample", DDPM_SAMPLER_DDIM, 20, 1, 1, PRED_SAMPLE, 1},
    };
    for (size_t p = 0; p < DDPM_ARRAY_LEN(plans); p++) {
        sc.prediction_type = plans[p].pred;
        ddpm_sample_opts o;
        ddpm_sample_opts_default(&o);
        o.sampler = plans[p].kind;
        o.steps = plans[p].steps;
        o.eta = plans[p].eta;
        o.clip_sample = plans[p].clip;
        sampler_plan plan = {0};
        ddpm_result r = sampler_plan_make(&sc, &o, &plan);
        CHECK(r == DDPM_OK, "sampler_plan_make %s: %s", plans[p].label, ddpm_last_error());
        if (r != DDPM_OK)
            continue;
        /* First (noisiest), two in the middle, the last (no noise for ddpm / ddim). */
        int rows[4] = {0, plan.n_steps / 3, plan.n_steps / 2, plan.n_steps - 1};
        int noisy = 0, quiet = 0;
        for (int i = 0; i < 4; i++) {
            noisy += plan.coef[(size_t)rows[i] * DDPM_COEF_STRIDE + DDPM_COEF_SIGMA] != 0;
            quiet += plan.coef[(size_t)rows[i] * DDPM_COEF_STRIDE + DDPM_COEF_SIGMA] == 0;
        }
        if (plans[p].kind == DDPM_SAMPLER_DDPM || plans[p].eta > 0)
            CHECK(noisy > 0 && quiet > 0, "%s: rows with and without noise (%d, %d)", plans[p].label, noisy,
                  quiet);
        ctx.direct_map = !plans[p].staging; /* exercise the staging upload/download path too */
        run_update_plan(plans[p].label, &plan, rows, 4);
        ctx.direct_map = 1;
        sampler_plan_free(&plan);
    }
}

/* (e) the whole backend on a tiny random model against the CPU backend: x_T from noise.comp (or an
 * uploaded init), the CPU U-Net (in chunks of 16 images) + the GPU update replayed per step. Both
 * run the same CPU U-Net, so the only differences are the update's and the noise's fp32 roundings,
 * carried through a few steps. */
static void test_backend(const char *spec, ddpm_sampler_kind kind, int steps, float eta, int n_images,
                         int first_index, int with_init)
{
    ddpm_result res = DDPM_OK;
    ddpm_model *m = NULL;
    backend *gpu = NULL, *cpu = NULL;
    sampler_plan plan = {0};
    float *got = NULL, *want = NULL, *init = NULL;
    ddpm_unet_config uc;
    unet_config_default(&uc);
    uc.sample_size = 8;
    uc.levels = 2;
    uc.block_out_channels[0] = 16;
    uc.block_out_channels[1] = 32;
    uc.down_attn[0] = 0;
    uc.down_attn[1] = 1;
    uc.up_attn[0] = 1;
    uc.up_attn[1] = 0;
    uc.layers_per_block = 1;
    uc.norm_num_groups = 8;
    ddpm_schedule_config sc;
    schedule_config_default(&sc);
    TRY(model_create_random(&uc, &sc, 11, 0.05f, &m));
    ddpm_sample_opts o;
    ddpm_sample_opts_default(&o);
    o.sampler = kind;
    o.steps = steps;
    o.eta = eta;
    o.n = n_images;
    o.first_index = first_index;
    o.seed = 2024;
    size_t n = (size_t)o.n * uc.in_channels * uc.sample_size * uc.sample_size;
    got = malloc(n * 4);
    want = malloc(n * 4);
    init = malloc(n * 4);
    if (!got || !want || !init) {
        res = ddpm_fail(DDPM_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (size_t e = 0; e < n; e++)
        init[e] = test_rand();
    TRY(sampler_plan_make(&m->schedule, &o, &plan));
    TRY(vk_backend_create(m, &plan, &o, spec, &gpu));
    TRY(cpu_backend_create(m, &plan, &o, &cpu));
    TRY(gpu->start(gpu, with_init ? init : NULL));
    TRY(cpu->start(cpu, with_init ? init : NULL));
    TRY(gpu->finish(gpu, got));
    TRY(cpu->finish(cpu, want));
    char what[200];
    snprintf(what, sizeof what, "backend x_T (%s)", with_init ? "uploaded init" : "noise.comp vs CPU");
    test_close(what, got, want, (int64_t)n, with_init ? 0 : 1e-5f, with_init ? 0 : 1e-6f);
    for (int i = 0; i < plan.n_steps; i++) {
        TRY(gpu->step(gpu, i));
        TRY(cpu->step(cpu, i));
    }
    TRY(gpu->finish(gpu, got));
    TRY(cpu->finish(cpu, want));
    double moved = 0;
    for (size_t e = 0; e < n; e++)
        moved = fmax(moved, fabs(got[e] - (with_init ? init[e] : 0)));
    snprintf(what, sizeof what, "backend %s vs cpu: %s eta %g, %d steps, %d images from index %d", gpu->name,
             kind == DDPM_SAMPLER_DDPM ? "ddpm" : "ddim", eta, plan.n_steps, n_images, first_index);
    test_close(what, got, want, (int64_t)n, 1e-4f, 1e-4f);
    CHECK(moved > 1e-3, "the steps changed x (max change %g)", moved);
cleanup:
    CHECK(res == DDPM_OK, "vulkan backend: %s", ddpm_last_error());
    if (gpu)
        gpu->destroy(gpu);
    if (cpu)
        cpu->destroy(cpu);
    sampler_plan_free(&plan);
    ddpm_model_free(m);
    free(got);
    free(want);
    free(init);
}

int main(void)
{
    /* Validation is part of what this test checks: on even when run by hand. */
    setenv("DDPM_VALIDATION", "1", 0);
    const char *spec = getenv("DDPM_DEVICE");
    if (spec && strcmp(spec, "cpu") == 0)
        spec = NULL;
    ddpm_result r = vk_context_create(spec, &ctx);
    if (r != DDPM_OK) {
        CHECK(0, "no Vulkan device (%s): %s; this test needs one (lavapipe works)", ddpm_result_string(r),
              ddpm_last_error());
        return test_summary("vk_update");
    }
    printf("device: %s (%s), Vulkan %u.%u, subgroup %u, validation %s\n", ctx.name, ctx.info.driver_name,
           VK_API_VERSION_MAJOR(ctx.limits.api_version), VK_API_VERSION_MINOR(ctx.limits.api_version),
           ctx.limits.subgroup_size, ctx.inst.validation ? "on" : "off");
    CHECK(ctx.inst.validation, "the validation layer must be on (DDPM_VALIDATION=%s)",
          getenv("DDPM_VALIDATION"));

    vk_program_desc nd = {.shader = VK_SHADER_noise, .n_buffers = 1, .push_size = sizeof(vk_noise_push)};
    r = vk_program_create(&ctx, &nd, &noise_prog);
    CHECK(r == DDPM_OK, "noise program: %s", ddpm_last_error());
    if (r == DDPM_OK) {
        test_philox_raw();
        test_noise();
    }
    test_update_plans();

    /* Contract checks of the helpers: bad sizes are errors, not crashes. */
    vk_buffer b = {0};
    CHECK(vk_buffer_create(&ctx, 0, VK_MEM_DEVICE, "empty", &b) == DDPM_ERR_ARG, "size-0 buffer refused");
    if (vk_buffer_create(&ctx, 16, VK_MEM_DEVICE, "small", &b) == DDPM_OK) {
        float f[8] = {0};
        CHECK(vk_buffer_upload(&ctx, &b, 8, f, 16) == DDPM_ERR_ARG, "upload past the end refused");
        CHECK(vk_buffer_download(&ctx, &b, 17, f, 0) == DDPM_ERR_ARG, "download past the end refused");
        vk_buffer_destroy(&ctx, &b);
    }
    uint32_t too_big = ctx.limits.max_push_constants + 4;
    vk_program p = {0};
    vk_program_desc bad = {.shader = VK_SHADER_noise, .n_buffers = 1, .push_size = too_big};
    CHECK(vk_program_create(&ctx, &bad, &p) == DDPM_ERR_UNSUPPORTED,
          "push constants above the limit refused");
    if (noise_prog.pipeline) {
        vk_noise_push push = {0};
        CHECK(vk_program_dispatch(&ctx, ctx.cmd, &noise_prog, 0, &push, 8, 1, 1, 1) == DDPM_ERR_ARG,
              "push size mismatch refused");
    }
    vk_program_destroy(&ctx, &noise_prog);
    vk_context_destroy(&ctx);

    vk_context bad_ctx;
    CHECK(vk_context_create("no such device anywhere", &bad_ctx) == DDPM_ERR_NO_DEVICE,
          "unknown device name refused");
    printf("unknown device message: %s\n", ddpm_last_error());
    CHECK(vk_context_create("4000000000", &bad_ctx) == DDPM_ERR_NO_DEVICE,
          "device index out of range refused");

    test_backend(spec, DDPM_SAMPLER_DDIM, 4, 1.0f, 18, 2, 0); /* 18 images: two CPU U-Net chunks */
    test_backend(spec, DDPM_SAMPLER_DDPM, 3, 0.0f, 2, 0, 1);

    /* After everything is destroyed: leaks are reported at device/instance destruction. */
    unsigned msgs = vk_validation_message_count();
    printf("validation messages: %u\n", msgs);
    CHECK(msgs == 0, "%u validation messages (printed above)", msgs);
    return test_summary("vk_update");
}
