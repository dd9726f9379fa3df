/* context.c: the Vulkan foundation: loader (volk), instance with optional validation, device
 * enumeration and selection, queue/pool/fence, submission helpers, barriers and buffers. */
#include "vk_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- errors ---------------------------------------------------------------------------------- */

const char *vk_result_name(VkResult r)
{
    switch (r) {
#define R(x)                                                                                                 \
    case x: return #x;
        R(VK_SUCCESS)
        R(VK_NOT_READY)
        R(VK_TIMEOUT)
        R(VK_INCOMPLETE)
        R(VK_ERROR_OUT_OF_HOST_MEMORY)
        R(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        R(VK_ERROR_INITIALIZATION_FAILED)
        R(VK_ERROR_DEVICE_LOST)
        R(VK_ERROR_MEMORY_MAP_FAILED)
        R(VK_ERROR_LAYER_NOT_PRESENT)
        R(VK_ERROR_EXTENSION_NOT_PRESENT)
        R(VK_ERROR_FEATURE_NOT_PRESENT)
        R(VK_ERROR_INCOMPATIBLE_DRIVER)
        R(VK_ERROR_TOO_MANY_OBJECTS)
        R(VK_ERROR_FORMAT_NOT_SUPPORTED)
        R(VK_ERROR_FRAGMENTED_POOL)
        R(VK_ERROR_OUT_OF_POOL_MEMORY)
        R(VK_ERROR_INVALID_SHADER_NV)
#undef R
    default: return "VK_ERROR_UNKNOWN";
    }
}

ddpm_result vk_fail(VkResult r, const char *what)
{
    /* `what` is the stringified call: keep only the function name. */
    int len = (int)strcspn(what, "(");
    ddpm_result code = (r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY ||
                        r == VK_ERROR_OUT_OF_POOL_MEMORY)
                           ? DDPM_ERR_NOMEM
                           : DDPM_ERR_VULKAN;
    return ddpm_fail(code, "%.*s failed: %s (%d)", len, what, vk_result_name(r), (int)r);
}

/* ---- loader, instance, validation ------------------------------------------------------------ */

static pthread_once_t volk_once = PTHREAD_ONCE_INIT;
static VkResult volk_status = VK_ERROR_INITIALIZATION_FAILED;
/* volk keeps the entry points in globals: one instance is created (and loaded) at a time. */
static pthread_mutex_t instance_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint validation_messages;

static void volk_init(void)
{
    volk_status = volkInitialize();
}

unsigned vk_validation_message_count(void)
{
    return atomic_load(&validation_messages);
}

static int validation_requested(void)
{
    const char *v = getenv("DDPM_VALIDATION");
    return v && *v && strcmp(v, "0") != 0;
}

/* Counts and prints every warning and error of the validation layer (and of the loader). */
static VKAPI_ATTR VkBool32 VKAPI_CALL debug_callback(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                     VkDebugUtilsMessageTypeFlagsEXT types,
                                                     const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                     void *user)
{
    (void)types;
    (void)user;
    if (severity < VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT)
        return VK_FALSE;
    atomic_fetch_add(&validation_messages, 1u);
    const char *kind = severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning";
    fprintf(stderr, "vulkan validation %s: %s\n", kind, data && data->pMessage ? data->pMessage : "(none)");
    return VK_FALSE;
}

static int has_extension(const VkExtensionProperties *exts, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(exts[i].extensionName, name) == 0)
            return 1;
    return 0;
}

/* Instance extensions offered by the loader and implicit layers, or by one layer. */
static ddpm_result instance_extensions(const char *layer, VkExtensionProperties **out, uint32_t *n)
{
    ddpm_result res = DDPM_OK;
    *out = NULL;
    *n = 0;
    VK_TRY(vkEnumerateInstanceExtensionProperties(layer, n, NULL));
    *out = ddpm_calloc(*n ? *n : 1, sizeof **out);
    if (!*out)
        return DDPM_ERR_NOMEM;
    VK_TRY(vkEnumerateInstanceExtensionProperties(layer, n, *out));
cleanup:
    return res;
}

ddpm_result vk_instance_create(vk_instance *vi)
{
    ddpm_result res = DDPM_OK;
    VkLayerProperties *layers = NULL;
    VkExtensionProperties *exts = NULL, *layer_exts = NULL;
    uint32_t n_exts = 0, n_layer_exts = 0;
    memset(vi, 0, sizeof *vi);

    pthread_once(&volk_once, volk_init);
    if (volk_status != VK_SUCCESS)
        return ddpm_fail(DDPM_ERR_NO_DEVICE,
                         "no Vulkan loader (libvulkan.so.1 could not be loaded): install a "
                         "Vulkan driver and loader, e.g. libvulkan1 + mesa-vulkan-drivers");
    uint32_t loader = volkGetInstanceVersion();
    if (loader < VK_API_VERSION_1_1)
        return ddpm_fail(DDPM_ERR_NO_DEVICE, "the Vulkan loader supports only %u.%u; ddpm-vk needs 1.1",
                         VK_API_VERSION_MAJOR(loader), VK_API_VERSION_MINOR(loader));
    vi->api_version = loader >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : VK_API_VERSION_1_1;
    vi->validation = validation_requested();

    const char *enabled_layers[1];
    uint32_t n_enabled_layers = 0;
    const char *enabled_exts[4];
    uint32_t n_enabled_exts = 0;
    int sync_validation = 0;
    TRY(instance_extensions(NULL, &exts, &n_exts));
    if (vi->validation) {
        const char *want = "VK_LAYER_KHRONOS_validation";
        uint32_t n_layers = 0;
        VK_TRY(vkEnumerateInstanceLayerProperties(&n_layers, NULL));
        layers = ddpm_calloc(n_layers ? n_layers : 1, sizeof *layers);
        if (!layers) {
            res = DDPM_ERR_NOMEM;
            goto cleanup;
        }
        VK_TRY(vkEnumerateInstanceLayerProperties(&n_layers, layers));
        int found = 0;
        for (uint32_t i = 0; i < n_layers; i++)
            found |= strcmp(layers[i].layerName, want) == 0;
        if (!found) {
            res = ddpm_fail(DDPM_ERR_UNSUPPORTED,
                            "DDPM_VALIDATION is set but the Vulkan validation layer %s is not installed "
                            "(e.g. vulkan-validationlayers); unset DDPM_VALIDATION to run without it",
                            want);
            goto cleanup;
        }
        enabled_layers[n_enabled_layers++] = want;
        TRY(instance_extensions(want, &layer_exts, &n_layer_exts));
        if (!has_extension(exts, n_exts, VK_EXT_DEBUG_UTILS_EXTENSION_NAME) &&
            !has_extension(layer_exts, n_layer_exts, VK_EXT_DEBUG_UTILS_EXTENSION_NAME)) {
            res = ddpm_fail(DDPM_ERR_UNSUPPORTED, "DDPM_VALIDATION is set but %s is not available",
                            VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
            goto cleanup;
        }
        enabled_exts[n_enabled_exts++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
        if (has_extension(layer_exts, n_layer_exts, VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME)) {
            enabled_exts[n_enabled_exts++] = VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME;
            sync_validation = 1;
        }
    }
    VkInstanceCreateFlags flags = 0;
    if (has_extension(exts, n_exts, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
        /* Lists MoltenVK-style portability drivers too. */
        enabled_exts[n_enabled_exts++] = VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME;
        flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
    }

    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "ddpm-vk";
    app.pEngineName = "ddpm-vk";
    app.apiVersion = vi->api_version;

    /* Chained into vkCreateInstance so that messages of instance creation and destruction (leaked
     * objects) are counted too. */
    VkDebugUtilsMessengerCreateInfoEXT dbg = {.sType =
                                                  VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
    dbg.messageSeverity =
        VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    dbg.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    dbg.pfnUserCallback = debug_callback;

    /* Synchronization validation catches missing barriers, which lavapipe would never show. */
    VkValidationFeatureEnableEXT enables[] = {VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
    VkValidationFeaturesEXT features = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT};
    features.enabledValidationFeatureCount = 1;
    features.pEnabledValidationFeatures = enables;
    features.pNext = &dbg;

    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ci.pNext = !vi->validation ? NULL : sync_validation ? (const void *)&features : (const void *)&dbg;
    ci.flags = flags;
    ci.pApplicationInfo = &app;
    ci.enabledLayerCount = n_enabled_layers;
    ci.ppEnabledLayerNames = enabled_layers;
    ci.enabledExtensionCount = n_enabled_exts;
    ci.ppEnabledExtensionNames = enabled_exts;

    pthread_mutex_lock(&instance_lock);
    VkResult r = vkCreateInstance(&ci, NULL, &vi->instance);
    if (r == VK_SUCCESS)
        volkLoadInstance(vi->instance);
    pthread_mutex_unlock(&instance_lock);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER) {
        res = ddpm_fail(DDPM_ERR_NO_DEVICE, "no Vulkan driver is installed (vkCreateInstance: %s)",
                        vk_result_name(r));
        goto cleanup;
    }
    if (r < 0) {
        res = vk_fail(r, "vkCreateInstance");
        goto cleanup;
    }
    if (vi->validation)
        VK_TRY(vkCreateDebugUtilsMessengerEXT(vi->instance, &dbg, NULL, &vi->messenger));

cleanup:
    free(layers);
    free(exts);
    free(layer_exts);
    if (res != DDPM_OK)
        vk_instance_destroy(vi);
    return res;
}

void vk_instance_destroy(vk_instance *vi)
{
    if (vi->messenger)
        vkDestroyDebugUtilsMessengerEXT(vi->instance, vi->messenger, NULL);
    if (vi->instance)
        vkDestroyInstance(vi->instance, NULL);
    memset(vi, 0, sizeof *vi);
}

/* ---- devices --------------------------------------------------------------------------------- */

static ddpm_result query_device(const vk_instance *vi, VkPhysicalDevice pd, vk_device_info *info)
{
    ddpm_result res = DDPM_OK;
    VkExtensionProperties *exts = NULL;
    VkQueueFamilyProperties *families = NULL;
    memset(info, 0, sizeof *info);
    info->physical = pd;
    info->compute_family = -1;
    vkGetPhysicalDeviceProperties(pd, &info->props);
    vkGetPhysicalDeviceMemoryProperties(pd, &info->mem);

    const VkPhysicalDeviceLimits *l = &info->props.limits;
    vk_limits *lim = &info->limits;
    lim->api_version = info->props.apiVersion < vi->api_version ? info->props.apiVersion : vi->api_version;
    lim->max_shared_memory = l->maxComputeSharedMemorySize;
    lim->max_invocations = l->maxComputeWorkGroupInvocations;
    for (int i = 0; i < 3; i++) {
        lim->max_group_size[i] = l->maxComputeWorkGroupSize[i];
        lim->max_group_count[i] = l->maxComputeWorkGroupCount[i];
    }
    lim->max_storage_range = l->maxStorageBufferRange;
    lim->max_push_constants = l->maxPushConstantsSize;
    lim->max_storage_buffers = l->maxPerStageDescriptorStorageBuffers;
    lim->min_storage_align = l->minStorageBufferOffsetAlignment;

    uint32_t n_families = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n_families, NULL);
    families = ddpm_calloc(n_families ? n_families : 1, sizeof *families);
    if (!families)
        return DDPM_ERR_NOMEM;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n_families, families);
    for (uint32_t i = 0; i < n_families && info->compute_family < 0; i++)
        if (families[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            info->compute_family = (int)i;

    if (lim->api_version < VK_API_VERSION_1_1) {
        info->unusable = "Vulkan 1.0 only (1.1 needed)";
        goto cleanup;
    }
    if (info->compute_family < 0)
        info->unusable = "no compute queue";

    uint32_t n_exts = 0;
    VK_TRY(vkEnumerateDeviceExtensionProperties(pd, NULL, &n_exts, NULL));
    exts = ddpm_calloc(n_exts ? n_exts : 1, sizeof *exts);
    if (!exts) {
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    VK_TRY(vkEnumerateDeviceExtensionProperties(pd, NULL, &n_exts, exts));
    int core12 = lim->api_version >= VK_API_VERSION_1_2;
    int f16_ext = has_extension(exts, n_exts, VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME);
    int driver_props = core12 || has_extension(exts, n_exts, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
    info->portability_subset = has_extension(exts, n_exts, "VK_KHR_portability_subset");
    info->creation_feedback = has_extension(exts, n_exts, VK_EXT_PIPELINE_CREATION_FEEDBACK_EXTENSION_NAME);

    VkPhysicalDeviceSubgroupProperties subgroup = {.sType =
                                                       VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceDriverProperties driver = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
    VkPhysicalDeviceProperties2 props2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    props2.pNext = &subgroup;
    if (driver_props)
        subgroup.pNext = &driver;
    vkGetPhysicalDeviceProperties2(pd, &props2);
    lim->subgroup_size = subgroup.subgroupSize;
    lim->subgroup_compute = (subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
    if (driver_props) {
        memcpy(info->driver_name, driver.driverName, sizeof info->driver_name);
        memcpy(info->driver_info, driver.driverInfo, sizeof info->driver_info);
        info->driver_name[sizeof info->driver_name - 1] = 0;
        info->driver_info[sizeof info->driver_info - 1] = 0;
    }

    VkPhysicalDevice16BitStorageFeatures storage16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
    VkPhysicalDeviceFeatures2 features2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    features2.pNext = &storage16;
    if (core12 || f16_ext)
        storage16.pNext = &f16;
    vkGetPhysicalDeviceFeatures2(pd, &features2);
    lim->storage16 = storage16.storageBuffer16BitAccess == VK_TRUE;
    lim->fp16_arith = (core12 || f16_ext) && f16.shaderFloat16 == VK_TRUE;
    info->need_f16_ext = lim->fp16_arith && !core12;

cleanup:
    free(exts);
    free(families);
    return res;
}

ddpm_result vk_enumerate_devices(const vk_instance *vi, vk_device_info **infos, uint32_t *count)
{
    ddpm_result res = DDPM_OK;
    VkPhysicalDevice *pds = NULL;
    *infos = NULL;
    *count = 0;
    uint32_t n = 0;
    VK_TRY(vkEnumeratePhysicalDevices(vi->instance, &n, NULL));
    if (n == 0)
        return ddpm_fail(DDPM_ERR_NO_DEVICE, "no Vulkan device found (the loader found no driver for this "
                                             "machine; lavapipe from mesa-vulkan-drivers runs on any CPU)");
    pds = ddpm_calloc(n, sizeof *pds);
    vk_device_info *out = ddpm_calloc(n, sizeof *out);
    if (!pds || !out) {
        free(out);
        res = DDPM_ERR_NOMEM;
        goto cleanup;
    }
    *infos = out;
    VkResult r = vkEnumeratePhysicalDevices(vi->instance, &n, pds);
    if (r < 0) { /* VK_INCOMPLETE: a device vanished in between, keep the first n */
        res = vk_fail(r, "vkEnumeratePhysicalDevices");
        goto cleanup;
    }
    for (uint32_t i = 0; i < n; i++)
        TRY(query_device(vi, pds[i], &out[i]));
    *count = n;
cleanup:
    free(pds);
    if (res != DDPM_OK) {
        free(*infos);
        *infos = NULL;
    }
    return res;
}

static int type_rank(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
    default: return 0;
    }
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return n == 0;
}

/* "0: name, 1: name" for error messages. */
static void device_list(const vk_device_info *infos, uint32_t n, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < n && used + 1 < size; i++) {
        int w = snprintf(buf + used, size - used, "%s%u: %s%s%s%s", i ? ", " : "", i,
                         infos[i].props.deviceName, infos[i].unusable ? " (unusable: " : "",
                         infos[i].unusable ? infos[i].unusable : "", infos[i].unusable ? ")" : "");
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

static ddpm_result select_device(const vk_device_info *infos, uint32_t n, const char *spec, uint32_t *out)
{
    char list[1024];
    device_list(infos, n, list, sizeof list);
    int gpu_only = spec && strcasecmp(spec, "gpu") == 0;
    if (!spec || !*spec || gpu_only) {
        int best = -1;
        for (uint32_t i = 0; i < n; i++)
            if (!infos[i].unusable &&
                !(gpu_only && infos[i].props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU) &&
                (best < 0 || type_rank(infos[i].props.deviceType) > type_rank(infos[best].props.deviceType)))
                best = (int)i;
        if (best < 0)
            return ddpm_fail(DDPM_ERR_NO_DEVICE, "no usable Vulkan %s; devices: %s",
                             gpu_only ? "GPU" : "device", list);
        *out = (uint32_t)best;
        return DDPM_OK;
    }
    size_t len = strlen(spec);
    if (strspn(spec, "0123456789") == len) {
        unsigned long idx = len <= 9 ? strtoul(spec, NULL, 10) : (unsigned long)n;
        if (idx >= n)
            return ddpm_fail(DDPM_ERR_NO_DEVICE, "Vulkan device index %s out of range; devices: %s", spec,
                             list);
        if (infos[idx].unusable)
            return ddpm_fail(DDPM_ERR_NO_DEVICE, "Vulkan device %lu (%s) is unusable: %s", idx,
                             infos[idx].props.deviceName, infos[idx].unusable);
        *out = (uint32_t)idx;
        return DDPM_OK;
    }
    int found = -1, matches = 0;
    for (uint32_t i = 0; i < n; i++)
        if (contains_nocase(infos[i].props.deviceName, spec)) {
            matches++;
            found = (int)i;
        }
    if (matches == 0)
        return ddpm_fail(DDPM_ERR_NO_DEVICE, "no Vulkan device matches \"%.64s\"; devices: %s", spec, list);
    if (matches > 1)
        return ddpm_fail(DDPM_ERR_NO_DEVICE, "\"%.64s\" matches %d Vulkan devices, use an index; devices: %s",
                         spec, matches, list);
    if (infos[found].unusable)
        return ddpm_fail(DDPM_ERR_NO_DEVICE, "Vulkan device %d (%s) is unusable: %s", found,
                         infos[found].props.deviceName, infos[found].unusable);
    *out = (uint32_t)found;
    return DDPM_OK;
}

/* ---- pipeline cache ---------------------------------------------------------------------------- */

/* FNV-1a over every embedded SPIR-V word: a new shader build gets a new cache file. */
static uint64_t shader_build_hash(void)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < (int)VK_SHADER_COUNT; i++) {
        const uint8_t *p = (const uint8_t *)vk_shader_table[i].code;
        for (size_t k = 0; k < vk_shader_table[i].size; k++)
            h = (h ^ p[k]) * 0x100000001b3ull;
    }
    return h;
}

/* $DDPM_CACHE_DIR, else $XDG_CACHE_HOME/ddpm-vk, else $HOME/.cache/ddpm-vk; "" when none is set.
 * DDPM_CACHE_DIR=0 (or empty) turns the cache off. */
static int cache_dir(char *buf, size_t size)
{
    const char *d = getenv("DDPM_CACHE_DIR");
    if (d)
        return *d && strcmp(d, "0") != 0 && snprintf(buf, size, "%s", d) < (int)size;
    d = getenv("XDG_CACHE_HOME");
    if (d && *d)
        return snprintf(buf, size, "%s/ddpm-vk", d) < (int)size;
    d = getenv("HOME");
    if (d && *d)
        return snprintf(buf, size, "%s/.cache/ddpm-vk", d) < (int)size;
    return 0;
}

static ddpm_result pipeline_cache_open(vk_context *ctx)
{
    ddpm_result res = DDPM_OK;
    uint8_t *data = NULL;
    size_t size = 0;
    char dir[900];
    ctx->cache_path[0] = 0;
    if (cache_dir(dir, sizeof dir)) {
        const VkPhysicalDeviceProperties *pr = &ctx->info.props;
        char uuid[2 * VK_UUID_SIZE + 1];
        for (unsigned i = 0; i < VK_UUID_SIZE; i++)
            snprintf(uuid + 2 * i, 3, "%02x", pr->pipelineCacheUUID[i]);
        snprintf(ctx->cache_path, sizeof ctx->cache_path, "%s/pipelines-%04x-%04x-%08x-%s-%016llx.bin", dir,
                 pr->vendorID, pr->deviceID, pr->driverVersion, uuid,
                 (unsigned long long)shader_build_hash());
        /* A missing or unreadable file is an empty cache; the driver checks the header of what it gets. */
        if (ddpm_read_file(ctx->cache_path, (size_t)1 << 28, &data, &size) != DDPM_OK) {
            data = NULL;
            size = 0;
        }
    }
    VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    ci.initialDataSize = size;
    ci.pInitialData = data;
    VkResult r = vkCreatePipelineCache(ctx->device, &ci, NULL, &ctx->pipeline_cache);
    if (r < 0 && size) { /* a cache the driver refuses: start empty */
        ci.initialDataSize = 0;
        ci.pInitialData = NULL;
        size = 0;
        r = vkCreatePipelineCache(ctx->device, &ci, NULL, &ctx->pipeline_cache);
    }
    VK_TRY(r);
    ctx->cache_loaded = size;
cleanup:
    free(data);
    return res;
}

static int mkdir_p(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        int ok = mkdir(path, 0755) == 0 || errno == EEXIST;
        *p = '/';
        if (!ok)
            return 0;
    }
    return mkdir(path, 0755) == 0 || errno == EEXIST;
}

/* Removes the cache files of older shader builds for the same device and driver: the name up to the
 * shader hash (the last '-') is the same, the hash differs. */
static void remove_stale_caches(const char *dir, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dash = strrchr(base, '-');
    if (!dash)
        return;
    size_t prefix = (size_t)(dash - base) + 1;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char full[1200];
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len > prefix && strncmp(e->d_name, base, prefix) == 0 && strcmp(e->d_name, base) != 0 &&
            strcmp(e->d_name + len - 4, ".bin") == 0 &&
            snprintf(full, sizeof full, "%s/%s", dir, e->d_name) < (int)sizeof full)
            (void)unlink(full);
    }
    closedir(d);
}

void vk_context_save_cache(vk_context *ctx)
{
    /* nothing new since the last save, or every pipeline came from the cache: nothing to write */
    if (!ctx->device || !ctx->pipeline_cache || !ctx->cache_path[0] || ctx->pipelines_created == 0 ||
        ctx->pipelines_cached == ctx->pipelines_created || ctx->cache_saved_at == ctx->pipelines_created)
        return;
    ctx->cache_saved_at = ctx->pipelines_created;
    size_t size = 0;
    if (vkGetPipelineCacheData(ctx->device, ctx->pipeline_cache, &size, NULL) != VK_SUCCESS || size == 0)
        return;
    void *data = malloc(size);
    if (!data)
        return;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", ctx->cache_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    /* A cache that cannot be written only costs start-up time next run: no error. */
    if (vkGetPipelineCacheData(ctx->device, ctx->pipeline_cache, &size, data) == VK_SUCCESS &&
        (!slash || mkdir_p(dir)) && ddpm_write_file_atomic(ctx->cache_path, data, size) == DDPM_OK && slash)
        remove_stale_caches(dir, ctx->cache_path);
    free(data);
}

void vk_context_clamp_baseline(vk_context *ctx)
{
    vk_limits *l = &ctx->limits;
#define CLAMP(field, v)                                                                                      \
    if (l->field > (v))                                                                                      \
    l->field = (v)
    CLAMP(max_shared_memory, 16384u);
    CLAMP(max_invocations, 128u);
    for (int i = 0; i < 3; i++) {
        CLAMP(max_group_size[i], 128u);
        CLAMP(max_group_count[i], 65535u);
    }
    CLAMP(max_storage_range, 1u << 27);
    CLAMP(max_push_constants, 128u);
    CLAMP(max_storage_buffers, 4u);
#undef CLAMP
}

/* ---- context --------------------------------------------------------------------------------- */

ddpm_result vk_context_create(const char *spec, vk_context *ctx)
{
    ddpm_result res = DDPM_OK;
    vk_device_info *infos = NULL;
    uint32_t n = 0, idx = 0;
    memset(ctx, 0, sizeof *ctx);

    TRY(vk_instance_create(&ctx->inst));
    TRY(vk_enumerate_devices(&ctx->inst, &infos, &n));
    TRY(select_device(infos, n, spec, &idx));
    ctx->info = infos[idx];
    ctx->physical = ctx->info.physical;
    ctx->limits = ctx->info.limits;
    ctx->name = ctx->info.props.deviceName;
    ctx->queue_family = (uint32_t)ctx->info.compute_family;
    ctx->direct_map = 1;

    float priority = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qci.queueFamilyIndex = ctx->queue_family;
    qci.queueCount = 1;
    qci.pQueuePriorities = &priority;

    /* Turn on what the device has and later shaders may use: 16-bit storage and fp16 arithmetic. */
    VkPhysicalDevice16BitStorageFeatures storage16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    storage16.storageBuffer16BitAccess = ctx->limits.storage16 ? VK_TRUE : VK_FALSE;
    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
    f16.shaderFloat16 = VK_TRUE;
    if (ctx->limits.fp16_arith)
        storage16.pNext = &f16;
    VkPhysicalDeviceFeatures2 features2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    features2.pNext = &storage16;

    const char *exts[3];
    uint32_t n_exts = 0;
    if (ctx->info.creation_feedback) {
        exts[n_exts++] = VK_EXT_PIPELINE_CREATION_FEEDBACK_EXTENSION_NAME;
        ctx->creation_feedback = 1;
    }
    if (ctx->info.need_f16_ext)
        exts[n_exts++] = VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME;
    if (ctx->info.portability_subset)
        exts[n_exts++] = "VK_KHR_portability_subset";

    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.pNext = &features2;
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &qci;
    dci.enabledExtensionCount = n_exts;
    dci.ppEnabledExtensionNames = exts;
    VK_TRY(vkCreateDevice(ctx->physical, &dci, NULL, &ctx->device));
    /* Device entry points stay the loader's trampolines (volkLoadInstance): they dispatch correctly
     * when several contexts exist at once. */
    vkGetDeviceQueue(ctx->device, ctx->queue_family, 0, &ctx->queue);

    VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pci.queueFamilyIndex = ctx->queue_family;
    VK_TRY(vkCreateCommandPool(ctx->device, &pci, NULL, &ctx->pool));
    TRY(vk_cmd_alloc(ctx, &ctx->cmd));
    vk_set_name(ctx, VK_OBJECT_TYPE_COMMAND_BUFFER, (uint64_t)(uintptr_t)ctx->cmd, "oneshot");

    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VK_TRY(vkCreateFence(ctx->device, &fci, NULL, &ctx->fence));
    TRY(pipeline_cache_open(ctx));

cleanup:
    free(infos);
    if (res != DDPM_OK)
        vk_context_destroy(ctx);
    return res;
}

void vk_context_destroy(vk_context *ctx)
{
    if (ctx->device) {
        vkDeviceWaitIdle(ctx->device);
        vk_context_save_cache(ctx);
        if (ctx->pipeline_cache)
            vkDestroyPipelineCache(ctx->device, ctx->pipeline_cache, NULL);
        vk_buffer_destroy(ctx, &ctx->staging);
        if (ctx->fence)
            vkDestroyFence(ctx->device, ctx->fence, NULL);
        if (ctx->pool) /* frees every command buffer allocated from it */
            vkDestroyCommandPool(ctx->device, ctx->pool, NULL);
        vkDestroyDevice(ctx->device, NULL);
    }
    vk_instance_destroy(&ctx->inst);
    memset(ctx, 0, sizeof *ctx);
}

void vk_set_name(const vk_context *ctx, VkObjectType type, uint64_t handle, const char *name)
{
    if (!ctx->inst.validation || !vkSetDebugUtilsObjectNameEXT || !name)
        return;
    VkDebugUtilsObjectNameInfoEXT ni = {.sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_OBJECT_NAME_INFO_EXT};
    ni.objectType = type;
    ni.objectHandle = handle;
    ni.pObjectName = name;
    vkSetDebugUtilsObjectNameEXT(ctx->device, &ni);
}

/* ---- submission and barriers ----------------------------------------------------------------- */

ddpm_result vk_cmd_alloc(vk_context *ctx, VkCommandBuffer *cmd)
{
    ddpm_result res = DDPM_OK;
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool = ctx->pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    *cmd = VK_NULL_HANDLE;
    VK_TRY(vkAllocateCommandBuffers(ctx->device, &ai, cmd));
cleanup:
    return res;
}

ddpm_result vk_submit_wait(vk_context *ctx, VkCommandBuffer cmd)
{
    ddpm_result res = DDPM_OK;
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd;
    VK_TRY(vkQueueSubmit(ctx->queue, 1, &si, ctx->fence));
    VK_TRY(vkWaitForFences(ctx->device, 1, &ctx->fence, VK_TRUE, UINT64_MAX));
    VK_TRY(vkResetFences(ctx->device, 1, &ctx->fence));
cleanup:
    return res;
}

ddpm_result vk_oneshot_begin(vk_context *ctx, VkCommandBuffer *cmd)
{
    ddpm_result res = DDPM_OK;
    VK_TRY(vkResetCommandBuffer(ctx->cmd, 0));
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    VK_TRY(vkBeginCommandBuffer(ctx->cmd, &bi));
    *cmd = ctx->cmd;
cleanup:
    return res;
}

ddpm_result vk_oneshot_end(vk_context *ctx)
{
    ddpm_result res = DDPM_OK;
    VK_TRY(vkEndCommandBuffer(ctx->cmd));
    TRY(vk_submit_wait(ctx, ctx->cmd));
cleanup:
    return res;
}

void vk_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkAccessFlags src_access,
                VkPipelineStageFlags dst_stage, VkAccessFlags dst_access)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = src_access;
    mb.dstAccessMask = dst_access;
    vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

void vk_barrier_compute(VkCommandBuffer cmd)
{
    vk_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
               VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
}

void vk_barrier_to_compute(VkCommandBuffer cmd)
{
    /* Host writes are made visible by the submission itself; earlier transfers and dispatches are not. */
    vk_barrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
               VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT,
               VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
}

void vk_barrier_from_compute(VkCommandBuffer cmd)
{
    vk_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
               VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_HOST_BIT,
               VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT);
}

/* ---- buffers --------------------------------------------------------------------------------- */

/* First memory type allowed by `bits` with all of `need`, preferring one that also has `prefer`. */
static int find_memory_type(const VkPhysicalDeviceMemoryProperties *mem, uint32_t bits,
                            VkMemoryPropertyFlags need, VkMemoryPropertyFlags prefer)
{
    for (int pass = 0; pass < 2; pass++) {
        VkMemoryPropertyFlags want = pass == 0 ? need | prefer : need;
        for (uint32_t i = 0; i < mem->memoryTypeCount; i++)
            if ((bits & (1u << i)) && (mem->memoryTypes[i].propertyFlags & want) == want)
                return (int)i;
    }
    return -1;
}

ddpm_result vk_buffer_create(vk_context *ctx, VkDeviceSize size, vk_mem_kind kind, const char *name,
                             vk_buffer *out)
{
    ddpm_result res = DDPM_OK;
    memset(out, 0, sizeof *out);
    if (size == 0)
        return ddpm_fail(DDPM_ERR_ARG, "buffer %s: size 0", name ? name : "");

    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.size = size;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    VK_TRY(vkCreateBuffer(ctx->device, &bci, NULL, &out->buffer));
    vk_set_name(ctx, VK_OBJECT_TYPE_BUFFER, (uint64_t)out->buffer, name);

    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(ctx->device, out->buffer, &req);
    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int type =
        kind == VK_MEM_DEVICE
            ? find_memory_type(&ctx->info.mem, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0)
            : find_memory_type(&ctx->info.mem, req.memoryTypeBits, host, VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    if (type < 0 && kind == VK_MEM_DEVICE) /* a device without device-local memory for buffers */
        type = find_memory_type(&ctx->info.mem, req.memoryTypeBits, 0, 0);
    if (type < 0) {
        res = ddpm_fail(DDPM_ERR_VULKAN, "buffer %s: no suitable memory type", name ? name : "");
        goto cleanup;
    }
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    mai.allocationSize = req.size;
    mai.memoryTypeIndex = (uint32_t)type;
    VK_TRY(vkAllocateMemory(ctx->device, &mai, NULL, &out->memory));
    VK_TRY(vkBindBufferMemory(ctx->device, out->buffer, out->memory, 0));
    out->size = size;

    VkMemoryPropertyFlags flags = ctx->info.mem.memoryTypes[type].propertyFlags;
    int map = (flags & host) == host && (kind == VK_MEM_HOST || ctx->direct_map);
    if (map)
        VK_TRY(vkMapMemory(ctx->device, out->memory, 0, VK_WHOLE_SIZE, 0, &out->mapped));

cleanup:
    if (res != DDPM_OK)
        vk_buffer_destroy(ctx, out);
    return res;
}

void vk_buffer_destroy(vk_context *ctx, vk_buffer *b)
{
    if (b->buffer)
        vkDestroyBuffer(ctx->device, b->buffer, NULL);
    if (b->memory) /* unmapped implicitly */
        vkFreeMemory(ctx->device, b->memory, NULL);
    memset(b, 0, sizeof *b);
}

static ddpm_result check_range(const vk_buffer *b, VkDeviceSize offset, VkDeviceSize size)
{
    if (offset > b->size || size > b->size - offset)
        return ddpm_fail(DDPM_ERR_ARG, "buffer access [%llu, +%llu) outside its %llu bytes",
                         (unsigned long long)offset, (unsigned long long)size, (unsigned long long)b->size);
    return DDPM_OK;
}

static ddpm_result staging_reserve(vk_context *ctx, VkDeviceSize size)
{
    if (ctx->staging.size >= size)
        return DDPM_OK;
    vk_buffer_destroy(ctx, &ctx->staging);
    VkDeviceSize want = size < 65536 ? 65536 : size;
    return vk_buffer_create(ctx, want, VK_MEM_HOST, "staging", &ctx->staging);
}

ddpm_result vk_buffer_upload(vk_context *ctx, const vk_buffer *b, VkDeviceSize offset, const void *data,
                             VkDeviceSize size)
{
    ddpm_result res = DDPM_OK;
    TRY(check_range(b, offset, size));
    if (size == 0)
        return DDPM_OK;
    if (b->mapped) {
        memcpy((char *)b->mapped + offset, data, (size_t)size);
        return DDPM_OK;
    }
    TRY(staging_reserve(ctx, size));
    memcpy(ctx->staging.mapped, data, (size_t)size);
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    TRY(vk_oneshot_begin(ctx, &cmd));
    /* Earlier dispatches may still read or write the destination range. */
    vk_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
               VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT,
               VK_ACCESS_TRANSFER_WRITE_BIT);
    VkBufferCopy region = {0, offset, size};
    vkCmdCopyBuffer(cmd, ctx->staging.buffer, b->buffer, 1, &region);
    vk_barrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
               VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
               VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                   VK_ACCESS_TRANSFER_WRITE_BIT);
    TRY(vk_oneshot_end(ctx));
cleanup:
    return res;
}

ddpm_result vk_buffer_download(vk_context *ctx, const vk_buffer *b, VkDeviceSize offset, void *data,
                               VkDeviceSize size)
{
    ddpm_result res = DDPM_OK;
    TRY(check_range(b, offset, size));
    if (size == 0)
        return DDPM_OK;
    if (b->mapped) {
        memcpy(data, (const char *)b->mapped + offset, (size_t)size);
        return DDPM_OK;
    }
    TRY(staging_reserve(ctx, size));
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    TRY(vk_oneshot_begin(ctx, &cmd));
    vk_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
               VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT,
               VK_ACCESS_TRANSFER_READ_BIT);
    VkBufferCopy region = {offset, 0, size};
    vkCmdCopyBuffer(cmd, b->buffer, ctx->staging.buffer, 1, &region);
    vk_barrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
               VK_ACCESS_HOST_READ_BIT);
    TRY(vk_oneshot_end(ctx));
    memcpy(data, ctx->staging.mapped, (size_t)size);
cleanup:
    return res;
}
