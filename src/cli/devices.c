/* devices.c: `ddpm-vk devices`: lists every Vulkan device with its limits and features, so a user
 * can pick one with --device (index or name) or $DDPM_DEVICE. */
#include "cli.h"
#include "vk/vk.h"

#include <stdio.h>
#include <string.h>

static const char usage[] = "usage: ddpm-vk devices\n"
                            "\n"
                            "Lists the Vulkan devices: index, name, type, driver, API version, memory,\n"
                            "compute limits and 16-bit support. Pick one for sampling with --device INDEX,\n"
                            "--device NAME-SUBSTRING or $DDPM_DEVICE; --device cpu runs without Vulkan.\n";

int cli_devices(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv[i], "--help", "-h")) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        return cli_unknown("devices", argv[i]);
    }
    ddpm_result r = vk_print_devices(stdout);
    fflush(stdout);
    if (r != DDPM_OK) {
        cli_error("devices: %s", ddpm_last_error()[0] ? ddpm_last_error() : ddpm_result_string(r));
        return CLI_FAIL;
    }
    return CLI_OK;
}
