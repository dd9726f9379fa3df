/* torchfile.h: reads PyTorch checkpoints (torch.save's zip of a pickle + raw storages) without running
 * anything: a zip reader and a restricted unpickler that knows only what state dicts need. */
#ifndef DDPM_TORCHFILE_H
#define DDPM_TORCHFILE_H

#include "safetensors.h"

/* Reads a .bin/.pt/.ckpt file into the same tensor table as a safetensors file: f->tensors get the
 * state dict's keys (nested dicts such as {"state_dict": {...}} or {"ema": ...} flattened with '.' or
 * selected by key: see the implementation), dtypes F32/F16/BF16, shapes, and data pointing into f->buf
 * (contiguous tensors; a non-contiguous or out-of-range view is an error). Any opcode or global outside
 * the allowed set is refused by name (e.g. "pickle global os.system is not allowed"). */
ddpm_result torch_open(const char *path, st_file *f);

#endif
