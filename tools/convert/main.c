/* main.c: the ddpm-convert command: diffusers folders, PyTorch checkpoints and the original DDPM port's
 * weights -> ddpm-vk safetensors (F32/F16), and --inspect for native and foreign files alike. */
#include "convert.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#ifndef DDPM_VERSION
#define DDPM_VERSION "unknown"
#endif

static const char usage[] =
    "usage: ddpm-convert IN OUT.safetensors [--config config.json] [--scheduler scheduler_config.json]\n"
    "                    [--select KEY] [--dtype f32|f16]\n"
    "       ddpm-convert --inspect FILE [--config config.json] [--scheduler scheduler_config.json]\n"
    "\n"
    "Converts a DDPM U-Net to a ddpm-vk model file (safetensors, config and schedule in __metadata__).\n"
    "IN is one of:\n"
    "  a diffusers model folder   config.json + diffusion_pytorch_model.safetensors (or .bin); the\n"
    "                             scheduler_config.json beside it or in ../scheduler/ is used if present\n"
    "  a diffusers pipeline       a folder with model_index.json, unet/ and scheduler/\n"
    "  a single file              .safetensors, .bin, .pt or .ckpt (give --config)\n"
    "Key names: diffusers (to_q/to_k/to_v/to_out.0), older diffusers (query/key/value/proj_attn) and the\n"
    "original DDPM PyTorch port of the DDIM code (temb.dense.0, down.0.block.0.norm1, mid.attn_1.q, ...).\n"
    "Inputs may be F32, F16 or BF16. Every tensor is checked against the config before anything is\n"
    "written; the output is written atomically.\n"
    "\n"
    "  --config FILE      a diffusers UNet2DModel config.json (overrides the folder's)\n"
    "  --scheduler FILE   a diffusers scheduler_config.json: beta schedule, num_train_timesteps,\n"
    "                     variance_type, clip_sample, prediction_type become the model's defaults\n"
    "                     (without one: the DDPM defaults, linear 1e-4 .. 0.02, T 1000, fixed_small, clip)\n"
    "  --select KEY       the state dict inside a PyTorch checkpoint that holds several, e.g. \"4\" for the\n"
    "                     EMA weights of the DDIM code's [model, optimizer, epoch, step, ema] files\n"
    "                     (a prefix shared by every key, such as \"state_dict\" or \"module\", is\n"
    "                     stripped without it)\n"
    "  --dtype f32|f16    output precision (default f32)\n"
    "  --inspect FILE     print config, schedule, tensor table, parameter count and an FNV-1a 64\n"
    "                     checksum of the stored tensor bytes; then whether the tensors fit the config\n";

static void error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ddpm-convert: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: 1 matched (*val set), -1 value missing, 0 other. */
static int value(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *val = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != 0)
        return 0;
    if (*i + 1 >= argc) {
        error("%s needs a value", name);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

static const char *dtype_label(st_dtype d)
{
    return d == ST_F16 ? "F16" : d == ST_BF16 ? "BF16" : "F32";
}

int main(int argc, char **argv)
{
    convert_opts o = {0};
    const char *inspect = NULL, *dtype = NULL, *pos[2] = {0};
    int n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char **slots[] = {&o.config, &o.scheduler, &o.select, &dtype, &inspect};
        const char *names[] = {"--config", "--scheduler", "--select", "--dtype", "--inspect"};
        int matched = 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("ddpm-convert %s\n", DDPM_VERSION);
            return 0;
        }
        for (int k = 0; k < 5 && !matched; k++) {
            int r = value(argc, argv, &i, names[k], slots[k]);
            if (r < 0)
                return 2;
            matched = r;
        }
        if (matched)
            continue;
        if (argv[i][0] == '-' && argv[i][1] != 0) {
            error("unknown option %s (see --help)", argv[i]);
            return 2;
        }
        if (n_pos == 2) {
            error("unexpected argument %s (usage: ddpm-convert IN OUT.safetensors)", argv[i]);
            return 2;
        }
        pos[n_pos++] = argv[i];
    }

    if (inspect) {
        if (n_pos || dtype) {
            error("--inspect takes one file and no other arguments (got %s)", n_pos ? pos[0] : "--dtype");
            return 2;
        }
        ddpm_result r = convert_inspect(inspect, &o, stdout);
        fflush(stdout);
        if (r != DDPM_OK) {
            error("%s", ddpm_last_error());
            return 1;
        }
        return 0;
    }
    if (n_pos != 2) {
        error("need IN and OUT (usage: ddpm-convert IN OUT.safetensors; see --help)");
        return 2;
    }
    st_dtype out_dtype;
    if (!dtype || strcmp(dtype, "f32") == 0)
        out_dtype = ST_F32;
    else if (strcmp(dtype, "f16") == 0)
        out_dtype = ST_F16;
    else {
        error("--dtype must be f32 or f16, not \"%s\"", dtype);
        return 2;
    }
    struct stat st;
    if (stat(pos[1], &st) == 0 && S_ISDIR(st.st_mode)) {
        error("%s is a folder: OUT names the file to write", pos[1]);
        return 2;
    }

    ddpm_model *m = NULL;
    convert_report rep;
    ddpm_result r = convert_load(pos[0], &o, &m, &rep);
    if (r == DDPM_OK)
        r = convert_save(m, pos[1], out_dtype);
    if (r != DDPM_OK) {
        error("%s", ddpm_last_error());
        ddpm_model_free(m);
        return 1;
    }
    printf("weights:    %s (%d tensors:", rep.weights, rep.n_tensors);
    for (int d = 0; d < 3; d++)
        if (rep.dtypes[d])
            printf(" %d %s", rep.dtypes[d], dtype_label((st_dtype)d));
    printf(")\n");
    if (rep.state_dict[0])
        printf("state dict: the tensors under \"%s\"\n", rep.state_dict);
    printf("naming:     %s; %d keys renamed\n", rep.naming, rep.n_renamed);
    printf("config:     %s\n", rep.config);
    printf("scheduler:  %s\n", rep.scheduler);
    printf("wrote:      %s (%s, %lld params in %d tensors)\n", pos[1], dtype_label(out_dtype),
           (long long)m->graph.n_weights, m->graph.n_params);
    ddpm_model_free(m);
    return 0;
}
