/* devices.c: `ddpm-vk devices`: every Vulkan device with the properties that matter for sampling
 * (type, driver, API version, memory heaps, compute limits, subgroup size, fp16 support). */
#include "vk_internal.h"

#include <stdlib.h>

static const char *type_name(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU";
    default: return "other";
    }
}

static void print_device(FILE *out, uint32_t index, const vk_device_info *d)
{
    const VkPhysicalDeviceProperties *p = &d->props;
    const vk_limits *l = &d->limits;
    fprintf(out, "%u: %s\n", index, p->deviceName);
    fprintf(out, "   type: %s, vendor 0x%04x, device 0x%04x\n", type_name(p->deviceType), p->vendorID,
            p->deviceID);
    if (d->driver_name[0])
        fprintf(out, "   driver: %s (%s)\n", d->driver_name, d->driver_info);
    fprintf(out, "   Vulkan %u.%u.%u\n", VK_API_VERSION_MAJOR(p->apiVersion),
            VK_API_VERSION_MINOR(p->apiVersion), VK_API_VERSION_PATCH(p->apiVersion));
    for (uint32_t h = 0; h < d->mem.memoryHeapCount; h++)
        fprintf(out, "   heap %u: %.0f MiB%s\n", h, (double)d->mem.memoryHeaps[h].size / (1024.0 * 1024.0),
                (d->mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) ? ", device-local" : "");
    if (d->unusable) {
        fprintf(out, "   unusable: %s\n", d->unusable);
        return;
    }
    fprintf(out,
            "   compute: shared memory %u KiB, workgroup %u invocations (%u x %u x %u), storage buffer "
            "range %u MiB, push constants %u B, %u storage buffers per stage\n",
            l->max_shared_memory / 1024, l->max_invocations, l->max_group_size[0], l->max_group_size[1],
            l->max_group_size[2], l->max_storage_range / (1024u * 1024u), l->max_push_constants,
            l->max_storage_buffers);
    fprintf(out, "   subgroup size %u%s, fp16 arithmetic: %s, 16-bit storage: %s\n", l->subgroup_size,
            l->subgroup_compute ? "" : " (no subgroup ops in compute)", l->fp16_arith ? "yes" : "no",
            l->storage16 ? "yes" : "no");
}

ddpm_result vk_print_devices(FILE *out)
{
    ddpm_result res = DDPM_OK;
    vk_instance vi;
    vk_device_info *infos = NULL;
    uint32_t n = 0;
    TRY(vk_instance_create(&vi));
    TRY(vk_enumerate_devices(&vi, &infos, &n));
    for (uint32_t i = 0; i < n; i++)
        print_device(out, i, &infos[i]);
cleanup:
    free(infos);
    vk_instance_destroy(&vi);
    return res;
}
