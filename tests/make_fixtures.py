#!/usr/bin/python3
# make_fixtures.py: regenerates every reference fixture in tests/fixtures with PyTorch (Debian's
# python3-torch): ops, U-Net forwards, schedules and sampler steps. CI only reads the committed output.
#   /usr/bin/python3 tests/make_fixtures.py [ops|unet|sched|convert|torchfiles ...]
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, 'torch_ref'))

import torch  # noqa: E402

PARTS = ['ops', 'unet', 'sched', 'convert', 'torchfiles', 'train_step']


def main():
    out = os.path.join(here, 'fixtures')
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    for part in sys.argv[1:] or PARTS:
        if part not in PARTS:
            sys.exit(f'unknown part {part}; choose from {PARTS}')
        mod = __import__(part)
        torch.manual_seed(1234)
        mod.make(out)
        print(f'{part}: done')


if __name__ == '__main__':
    main()
