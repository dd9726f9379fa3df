# stio.py: writes safetensors files from numpy/torch tensors without the safetensors package
# (Debian 12 does not ship it): u64 LE header length, JSON header, raw little-endian data.
import json
import struct

import numpy as np

_DT = {np.dtype('float32'): 'F32', np.dtype('float16'): 'F16'}


def save(path, tensors, metadata=None, dtype=None):
    """tensors: dict name -> torch.Tensor | np.ndarray (float32 unless dtype given: 'F16'/'BF16')."""
    header, blobs, off = {}, [], 0
    if metadata:
        header['__metadata__'] = {k: str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name]
        if hasattr(t, 'detach'):
            t = t.detach().cpu().float().numpy()
        a = np.ascontiguousarray(np.asarray(t, dtype=np.float32))
        if dtype == 'F16':
            a, code = a.astype('<f2'), 'F16'
        elif dtype == 'BF16':
            u = a.view('<u4').astype(np.uint64)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype('<u2')  # round to nearest even
            a, code = u, 'BF16'
        else:
            a, code = a.astype('<f4'), 'F32'
        b = a.tobytes()
        header[name] = {'dtype': code, 'shape': list(a.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
