# torchfiles.py: real torch.save checkpoints for test_torchfile (tests/fixtures/torchfile/), each with a
# safetensors file of the values torch itself reads back (float32, exact) and the expected names and dtypes.
#
# Files: state.pt (an OrderedDict: F32, F16, BF16, a Parameter, storage offsets, two views of one storage, a
# scalar, an empty tensor, an int64 tensor that is skipped), module.pt (an nn.Module state dict, whose
# _metadata arrives through BUILD), nested.pt (dicts, lists, tuples, int keys, plain data), ddim.ckpt (the
# DDIM code's [model, optimizer, epoch, step, ema] with a real Adam state), proto4.pt / proto5.pt (pickle
# protocols 4 and 5: FRAME, MEMOIZE, STACK_GLOBAL), legacy.pt and legacy_ddim.ckpt (the pre-1.6 format:
# pickles, then the storages), evil_*.pt (objects whose unpickling runs a shell command via os.system or eval).
import collections
import os

import torch
from torch import nn

import stio


def _expect(path, ckpt):
    """Writes <path>.expect.safetensors: what torch.load returns, flattened like torch_open names it, with
    each tensor's dtype and shape in the metadata."""
    tensors, meta = {}, {}

    def walk(v, name):
        if isinstance(v, torch.Tensor):
            dt = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}.get(v.dtype)
            if dt is None:
                meta['skipped.' + name] = str(v.dtype)
                return
            tensors[name] = v.detach().float()
            meta['dtype.' + name] = dt
            meta['shape.' + name] = ','.join(str(d) for d in v.shape)  # stio stores 0-dim as (1,)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f'{name}.{k}' if name else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f'{name}.{i}' if name else str(i))

    walk(torch.load(path), '')
    stio.save(path + '.expect.safetensors', tensors, metadata=meta)


def _save(out, name, obj, **kw):
    path = os.path.join(out, name)
    torch.save(obj, path, **kw)
    _expect(path, obj)


class _System:
    """Unpickling this would run a shell command: the file must be refused without running it."""

    def __reduce__(self):
        return (os.system, ('touch "$DDPM_PWNED_MARKER"',))


class _Eval:
    def __reduce__(self):
        return (eval, ('__import__("os").system(\'touch "$DDPM_PWNED_MARKER"\')',))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.lin = nn.Linear(4, 5, bias=False)


def make(out):
    out = os.path.join(out, 'torchfile')
    os.makedirs(out, exist_ok=True)

    base = torch.randn(40)
    shared = torch.randn(12)
    sd = collections.OrderedDict()
    sd['f32.weight'] = torch.randn(4, 3, 2, 2)
    sd['f16.weight'] = torch.randn(5, 3).half()
    sd['bf16.weight'] = torch.randn(2, 7).bfloat16()
    sd['param'] = nn.Parameter(torch.randn(6))
    sd['offset'] = base[10:22].view(3, 4)  # storage offset 10 inside a 40-element storage
    sd['shared.a'] = shared[:6].view(2, 3)  # two views of one storage
    sd['shared.b'] = shared[6:]
    sd['scalar'] = torch.tensor(2.5)
    sd['empty'] = torch.zeros(0, 3)
    sd['unit_dims'] = torch.randn(1, 4, 1, 2)
    sd['steps'] = torch.arange(5)  # int64: skipped by the reader
    sd['specials'] = torch.tensor([0.0, -0.0, float('inf'), float('-inf'), 1e-40, 65504.0]).half()
    _save(out, 'state.pt', sd)

    torch.manual_seed(7)
    m = Tiny()
    _save(out, 'module.pt', m.state_dict())

    nested = {
        'state_dict': m.state_dict(),
        'epoch': 3,
        'lr': 0.5,
        'name': 'ddpm',
        'flags': [True, False, None],
        'list': [torch.randn(2), {'inner': torch.randn(3).half()}],
        'tuple': (torch.randn(1, 2),),
        7: torch.randn(3),
    }
    _save(out, 'nested.pt', nested)

    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = sum(p.square().sum() for p in model.parameters())
    loss.backward()
    opt.step()
    ema = Tiny()
    ema.load_state_dict(model.state_dict())
    _save(out, 'ddim.ckpt', [model.state_dict(), opt.state_dict(), 5, 1234, ema.state_dict()])

    _save(out, 'proto4.pt', sd, pickle_protocol=4)
    _save(out, 'proto5.pt', nested, pickle_protocol=5)
    torch.save({'w': torch.randn(2), 'hook': _System()}, os.path.join(out, 'evil_system.pt'))
    torch.save({'w': torch.randn(2), 'hook': _Eval()}, os.path.join(out, 'evil_eval.pt'))
    torch.save([_System()], os.path.join(out, 'evil_legacy.pt'), _use_new_zipfile_serialization=False)
    _save(out, 'legacy.pt', sd, _use_new_zipfile_serialization=False)
    _save(out, 'legacy_ddim.ckpt', [model.state_dict(), opt.state_dict(), 5, 1234, ema.state_dict()],
          _use_new_zipfile_serialization=False)
