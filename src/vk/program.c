/* program.c: compute "programs" (shader module + descriptor set layout + pipeline layout + pipeline
 * + descriptor sets) built from the embedded SPIR-V, and the dispatch helper taking thread counts. */
#include "vk_internal.h"

#include <stdlib.h>
#include <string.h>

#include "vk_shader_code.h"

const vk_shader_code vk_shader_table[VK_SHADER_COUNT] = {
#define X(n) {#n, spv_##n, sizeof spv_##n},
    VK_SHADERS(X)
#undef X
};

/* The workgroup width used when a program does not ask for one: wide enough to fill a SIMD unit on
 * every GPU family, small enough for the Android floor of 128 invocations. */
static uint32_t default_local_x(const vk_limits *l)
{
    uint32_t x = 256;
    if (x > l->max_invocations)
        x = l->max_invocations;
    if (x > l->max_group_size[0])
        x = l->max_group_size[0];
    return x ? x : 1;
}

ddpm_result vk_program_create(vk_context *ctx, const vk_program_desc *desc, vk_program *out)
{
    ddpm_result res = DDPM_OK;
    VkDescriptorSetLayout *layouts = NULL;
    memset(out, 0, sizeof *out);
    if ((unsigned)desc->shader >= VK_SHADER_COUNT)
        return ddpm_fail(DDPM_ERR_ARG, "unknown shader %d", (int)desc->shader);
    const vk_shader_code *sc = &vk_shader_table[desc->shader];
    const vk_limits *lim = &ctx->limits;
    out->name = sc->name;
    out->n_buffers = desc->n_buffers;
    out->push_size = desc->push_size;
    out->max_sets = desc->max_sets ? desc->max_sets : 1;

    /* Every limit is checked here, with a message naming the program, instead of failing later
     * inside the driver. */
    if (desc->push_size % 4 != 0 || desc->push_size > lim->max_push_constants)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "program %s: %u bytes of push constants (device limit %u)",
                         sc->name, desc->push_size, lim->max_push_constants);
    if (desc->n_buffers == 0 || desc->n_buffers > lim->max_storage_buffers)
        return ddpm_fail(DDPM_ERR_UNSUPPORTED, "program %s: %u storage buffers (device limit %u)", sc->name,
                         desc->n_buffers, lim->max_storage_buffers);
    if (desc->n_spec > VK_MAX_SPEC)
        return ddpm_fail(DDPM_ERR_ARG, "program %s: %u specialization constants (max %d)", sc->name,
                         desc->n_spec, VK_MAX_SPEC);
    out->local_size[0] = desc->local_size[0] ? desc->local_size[0] : default_local_x(lim);
    out->local_size[1] = desc->local_size[1] ? desc->local_size[1] : 1;
    out->local_size[2] = desc->local_size[2] ? desc->local_size[2] : 1;
    uint64_t invocations = (uint64_t)out->local_size[0] * out->local_size[1] * out->local_size[2];
    if (invocations > lim->max_invocations || out->local_size[0] > lim->max_group_size[0] ||
        out->local_size[1] > lim->max_group_size[1] || out->local_size[2] > lim->max_group_size[2])
        return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                         "program %s: workgroup %ux%ux%u exceeds the device (max %u invocations, %ux%ux%u)",
                         sc->name, out->local_size[0], out->local_size[1], out->local_size[2],
                         lim->max_invocations, lim->max_group_size[0], lim->max_group_size[1],
                         lim->max_group_size[2]);

    VkShaderModuleCreateInfo smci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    smci.codeSize = sc->size;
    smci.pCode = sc->code;
    VK_TRY(vkCreateShaderModule(ctx->device, &smci, NULL, &out->module));
    vk_set_name(ctx, VK_OBJECT_TYPE_SHADER_MODULE, (uint64_t)out->module, sc->name);

    VkDescriptorSetLayoutBinding bindings[32];
    if (desc->n_buffers > DDPM_ARRAY_LEN(bindings)) {
        res = ddpm_fail(DDPM_ERR_ARG, "program %s: too many buffers", sc->name);
        goto cleanup;
    }
    for (uint32_t i = 0; i < desc->n_buffers; i++) {
        bindings[i] = (VkDescriptorSetLayoutBinding){0};
        bindings[i].binding = i;
        bindings[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        bindings[i].descriptorCount = 1;
        bindings[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo dslci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    dslci.bindingCount = desc->n_buffers;
    dslci.pBindings = bindings;
    VK_TRY(vkCreateDescriptorSetLayout(ctx->device, &dslci, NULL, &out->set_layout));

    VkPushConstantRange range = {VK_SHADER_STAGE_COMPUTE_BIT, 0, desc->push_size};
    VkPipelineLayoutCreateInfo plci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    plci.setLayoutCount = 1;
    plci.pSetLayouts = &out->set_layout;
    plci.pushConstantRangeCount = desc->push_size ? 1 : 0;
    plci.pPushConstantRanges = &range;
    VK_TRY(vkCreatePipelineLayout(ctx->device, &plci, NULL, &out->layout));

    /* Constants 0..2: the workgroup size; then the program's own. */
    uint32_t values[3 + VK_MAX_SPEC];
    VkSpecializationMapEntry entries[3 + VK_MAX_SPEC];
    uint32_t n_entries = 3 + desc->n_spec;
    for (uint32_t i = 0; i < n_entries; i++) {
        values[i] = i < 3 ? out->local_size[i] : desc->spec[i - 3];
        entries[i].constantID = i;
        entries[i].offset = i * (uint32_t)sizeof(uint32_t);
        entries[i].size = sizeof(uint32_t);
    }
    VkSpecializationInfo spec = {n_entries, entries, n_entries * sizeof(uint32_t), values};

    VkComputePipelineCreateInfo cpci = {.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cpci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    cpci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    cpci.stage.module = out->module;
    cpci.stage.pName = "main";
    cpci.stage.pSpecializationInfo = &spec;
    cpci.layout = out->layout;
    /* Creation feedback says whether the pipeline came from the cache (tests and --verbose use it). */
    VkPipelineCreationFeedbackEXT fb = {0}, stage_fb = {0};
    VkPipelineCreationFeedbackCreateInfoEXT fbci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_CREATION_FEEDBACK_CREATE_INFO_EXT};
    fbci.pPipelineCreationFeedback = &fb;
    fbci.pipelineStageCreationFeedbackCount = 1;
    fbci.pPipelineStageCreationFeedbacks = &stage_fb;
    if (ctx->creation_feedback)
        cpci.pNext = &fbci;
    double t0 = vk_now_ms();
    VK_TRY(vkCreateComputePipelines(ctx->device, ctx->pipeline_cache, 1, &cpci, NULL, &out->pipeline));
    ctx->pipeline_ms += vk_now_ms() - t0;
    ctx->pipelines_created++;
    if ((fb.flags & VK_PIPELINE_CREATION_FEEDBACK_VALID_BIT_EXT) &&
        (fb.flags & VK_PIPELINE_CREATION_FEEDBACK_APPLICATION_PIPELINE_CACHE_HIT_BIT_EXT))
        ctx->pipelines_cached++;
    vk_set_name(ctx, VK_OBJECT_TYPE_PIPELINE, (uint64_t)out->pipeline, sc->name);

    VkDescriptorPoolSize pool_size = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, desc->n_buffers * out->max_sets};
    VkDescriptorPoolCreateInfo dpci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
    dpci.maxSets = out->max_sets;
    dpci.poolSizeCount = 1;
    dpci.pPoolSizes = &pool_size;
    VK_TRY(vkCreateDescriptorPool(ctx->device, &dpci, NULL, &out->pool));

    out->sets = ddpm_calloc(out->max_sets, sizeof *out->sets);
    layouts = ddpm_calloc(out->max_sets, sizeof *layouts);
    if (!out->sets || !layouts) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    for (uint32_t i = 0; i < out->max_sets; i++)
        layouts[i] = out->set_layout;
    VkDescriptorSetAllocateInfo dsai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    dsai.descriptorPool = out->pool;
    dsai.descriptorSetCount = out->max_sets;
    dsai.pSetLayouts = layouts;
    VK_TRY(vkAllocateDescriptorSets(ctx->device, &dsai, out->sets));

cleanup:
    free(layouts);
    if (res != DDPM_OK)
        vk_program_destroy(ctx, out);
    return res;
}

void vk_program_destroy(vk_context *ctx, vk_program *p)
{
    if (p->pool) /* frees the sets */
        vkDestroyDescriptorPool(ctx->device, p->pool, NULL);
    if (p->pipeline)
        vkDestroyPipeline(ctx->device, p->pipeline, NULL);
    if (p->layout)
        vkDestroyPipelineLayout(ctx->device, p->layout, NULL);
    if (p->set_layout)
        vkDestroyDescriptorSetLayout(ctx->device, p->set_layout, NULL);
    if (p->module)
        vkDestroyShaderModule(ctx->device, p->module, NULL);
    free(p->sets);
    memset(p, 0, sizeof *p);
}

ddpm_result vk_program_bind(vk_context *ctx, vk_program *p, uint32_t set, const vk_buffer *const *bufs)
{
    if (set >= p->max_sets)
        return ddpm_fail(DDPM_ERR_ARG, "program %s: descriptor set %u of %u", p->name, set, p->max_sets);
    VkDescriptorBufferInfo infos[32];
    VkWriteDescriptorSet writes[32];
    for (uint32_t i = 0; i < p->n_buffers; i++) {
        if (!bufs[i] || !bufs[i]->buffer)
            return ddpm_fail(DDPM_ERR_ARG, "program %s: buffer %u not created", p->name, i);
        if (bufs[i]->size > ctx->limits.max_storage_range)
            return ddpm_fail(
                DDPM_ERR_UNSUPPORTED,
                "program %s: buffer %u holds %llu bytes, above the device's storage buffer range "
                "of %u bytes (use fewer images per run)",
                p->name, i, (unsigned long long)bufs[i]->size, ctx->limits.max_storage_range);
        infos[i] = (VkDescriptorBufferInfo){bufs[i]->buffer, 0, VK_WHOLE_SIZE};
        writes[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
        writes[i].dstSet = p->sets[set];
        writes[i].dstBinding = i;
        writes[i].descriptorCount = 1;
        writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        writes[i].pBufferInfo = &infos[i];
    }
    vkUpdateDescriptorSets(ctx->device, p->n_buffers, writes, 0, NULL);
    return DDPM_OK;
}

ddpm_result vk_program_dispatch(const vk_context *ctx, VkCommandBuffer cmd, const vk_program *p, uint32_t set,
                                const void *push, uint32_t push_size, uint32_t threads_x, uint32_t threads_y,
                                uint32_t threads_z)
{
    if (push_size != p->push_size)
        return ddpm_fail(DDPM_ERR_ARG, "program %s: %u bytes of push constants given, %u declared", p->name,
                         push_size, p->push_size);
    if (set >= p->max_sets)
        return ddpm_fail(DDPM_ERR_ARG, "program %s: descriptor set %u of %u", p->name, set, p->max_sets);
    uint32_t threads[3] = {threads_x, threads_y, threads_z}, groups[3];
    for (int i = 0; i < 3; i++) {
        groups[i] = threads[i] / p->local_size[i] + (threads[i] % p->local_size[i] != 0);
        if (groups[i] > ctx->limits.max_group_count[i])
            return ddpm_fail(DDPM_ERR_UNSUPPORTED,
                             "program %s: %u workgroups in dimension %d exceed the device limit %u", p->name,
                             groups[i], i, ctx->limits.max_group_count[i]);
    }
    if (groups[0] == 0 || groups[1] == 0 || groups[2] == 0)
        return DDPM_OK; /* nothing to do */
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p->pipeline);
    vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p->layout, 0, 1, &p->sets[set], 0, NULL);
    if (push_size)
        vkCmdPushConstants(cmd, p->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size, push);
    vkCmdDispatch(cmd, groups[0], groups[1], groups[2]);
    return DDPM_OK;
}
