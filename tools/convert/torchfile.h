/* torchfile.h: reads PyTorch checkpoints (torch.save's zip of a pickle + raw storages) without running
 * anything: a zip reader and a restricted unpickler that knows only what state dicts need. */
#ifndef DDPM_TORCHFILE_H
#define DDPM_TORCHFILE_H

#include "safetensors.h"

/* Reads a .bin/.pt/.ckpt file into the same tensor table as a safetensors file: f->tensors get the
 * state dict's keys (nested dicts such as {"state_dict": {...}} or {"ema": ...} flattened with '.', then
 * selected with torch_select(): see below), dtypes F32/F16/BF16, shapes, and data pointing into f->buf
 * (contiguous tensors; a non-contiguous or out-of-range view is an error). Any opcode or global outside
 * the allowed set is refused by name (e.g. "pickle global os.system is not allowed").
 *
 * Names: every tensor reachable from the pickled object through dicts, lists and tuples is named by its
 * path, the parts joined with '.':
 *   a plain state dict {"conv_in.weight": t}            -> "conv_in.weight"
 *   {"state_dict": {...}, "epoch": 7}                   -> "state_dict.conv_in.weight" (the int is left out)
 *   the DDIM code's [model, optimizer, epoch, step, ema] -> "0.conv_in.weight", "1.state.0.exp_avg",
 *                                                           "4.conv_in.weight"
 * List and tuple items are named by index, integer dict keys by their decimal value; values that are
 * neither tensors nor containers are left out. A top-level tensor, a tensor under a key that is neither a
 * string nor an integer, names longer than 255 bytes, invalid UTF-8 and two paths giving the same name
 * are refused. torch_select() then picks one sub-dict. f->tensors is sorted by name (st_find works).
 * Tensors may share bytes (views of one storage). Tensors of other dtypes (int64, float64, bool, ...) are
 * left out of f->tensors and listed, comma-separated with their dtypes, in the metadata value
 * "torch.skipped" (st_meta_get); f has no other metadata. The file stays in f->buf until st_close().
 * Both torch.save formats are read: the zip (torch >= 1.6; CRC-32 checked, zip64) and the legacy one
 * (a run of pickles followed by the storages). The tar format (torch < 0.4), big-endian files and
 * compressed zip entries are refused by name. Files up to 16 GiB. */
ddpm_result torch_open(const char *path, st_file *f);

/* As torch_open for a file already in memory (`what` names it in messages); takes ownership of buf on
 * success AND failure, as st_parse. */
ddpm_result torch_parse(uint8_t *buf, size_t size, const char *what, st_file *f);

/* 1 when the first n bytes of a file look like a PyTorch checkpoint (zip, legacy or tar format)
 * rather than safetensors; 8 bytes are enough for the zip and legacy formats. */
int torch_sniff(const uint8_t *head, size_t n);

/* Keeps only the tensors named "<prefix>.<rest>" and renames them "<rest>" (e.g. prefix "state_dict",
 * "4" or "module"); the rest are dropped. DDPM_ERR_MODEL, naming the prefix, when none match (f is then
 * unchanged). */
ddpm_result torch_select(st_file *f, const char *prefix);

#endif
