#!/bin/sh
# test_cli.sh: end-to-end tests of the ddpm-vk command: good runs on the CPU and Vulkan, and bad input
# (hostile model files, bad options, bad --init), each giving one error line, non-zero exit, no file.
#   tests/test_cli.sh path/to/ddpm-vk    (DDPM_FIXTURES=tests/fixtures; /usr/bin/python3 with numpy)
# shellcheck disable=SC2086 # option lists ($common, $cpu, $out) are split into words on purpose
set -u

BIN=${1:?usage: test_cli.sh path/to/ddpm-vk}
FIX=${DDPM_FIXTURES:?DDPM_FIXTURES must name tests/fixtures}
PY=/usr/bin/python3
MODEL=$FIX/unet_a.safetensors # 3 x 16 x 16 images, random weights

suite=cli
. "$(dirname "$0")/checks.sh"

# ---- good runs ---------------------------------------------------------------------------------

# run NAME ARGS...: runs ddpm-vk with stdout/stderr in $tmp/NAME.out / NAME.err; sets $rc
run() {
    name=$1
    shift
    "$BIN" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}

# expect_ok DESCRIPTION: the last run succeeded
expect_ok() {
    if [ "$rc" -eq 0 ]; then
        pass "$1"
    else
        fail "$1 (exit $rc: $(show "$tmp/$name.err"))"
    fi
}

common="--sampler ddim --steps 3 -n 2" # split on purpose: option lists without paths

run help --help
expect_ok "--help"
run version --version
if [ "$rc" -eq 0 ] && grep -q '^ddpm-vk [0-9]' "$tmp/version.out"; then
    pass "--version prints '$(cat "$tmp/version.out")'"
else
    fail "--version (exit $rc: $(show "$tmp/version.out"))"
fi
run samplehelp sample --help
if [ "$rc" -eq 0 ] && grep -q -- '--sampler' "$tmp/samplehelp.out"; then
    pass "sample --help lists the options"
else
    fail "sample --help (exit $rc)"
fi

run cpu sample --model "$MODEL" $common --device cpu --seed 7 --out "$tmp/a.png" --save-raw "$tmp/a.npy"
expect_ok "sample on the CPU (ddim, 3 steps, 2 images)"

# The PNG: magic, IHDR (2 images of 16x16 in a 2x1 grid with a 2-pixel border: 38 x 20, 8-bit RGB),
# and every pixel equal to clamp((x + 1) / 2, 0, 1) * 255 rounded from the raw samples, border black.
# Decoded here with zlib and the PNG filters (python stdlib) and compared with numpy.
if "$PY" - "$tmp/a.png" "$tmp/a.npy" >"$tmp/png.log" 2>&1 <<'EOF'; then
import struct, sys, zlib
import numpy as np
png = open(sys.argv[1], 'rb').read()
assert png[:8] == b'\x89PNG\r\n\x1a\n', 'bad PNG magic'
length, kind = struct.unpack('>I4s', png[8:16])
assert kind == b'IHDR' and length == 13, 'first chunk is not IHDR'
w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', png[16:29])
assert (w, h, depth, ctype, interlace) == (38, 20, 8, 2, 0), f'IHDR {w}x{h} depth {depth} type {ctype}'
pos, idat = 8, b''
while pos < len(png):
    n, kind = struct.unpack('>I4s', png[pos:pos + 8])
    if kind == b'IDAT':
        idat += png[pos + 8:pos + 8 + n]
    pos += 12 + n
raw, bpp, stride = zlib.decompress(idat), 3, w * 3
img, prev = bytearray(), bytearray(stride)
for y in range(h):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else: assert f == 0, f'filter {f}'
    img += line
    prev = line
got = np.frombuffer(bytes(img), np.uint8).reshape(h, w, 3).astype(int)
x = np.load(sys.argv[2])
assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32, f'npy {x.shape} {x.dtype}'
assert np.isfinite(x).all(), 'non-finite samples'
v = np.clip((x + np.float32(1)) * np.float32(0.5), 0, 1).astype(np.float32)
want = np.floor(v * np.float32(255) + np.float32(0.5)).astype(int)
grid = np.zeros((h, w, 3), int)
for k in range(2):
    grid[2:18, 2 + k * 18:18 + k * 18] = want[k].transpose(1, 2, 0)
diff = np.abs(got - grid)
assert diff.max() == 0, f'pixels differ at {np.unravel_index(diff.argmax(), diff.shape)}: max {diff.max()}'
print(f'{w}x{h} RGB, {w * h} pixels equal, samples in [{x.min():.3f}, {x.max():.3f}]')
EOF
    pass "PNG magic, IHDR 38x20 RGB and pixels match the raw samples ($(show "$tmp/png.log"))"
else
    fail "PNG check: $(show "$tmp/png.log")"
fi

run cpu2 sample --model "$MODEL" $common --device cpu --seed 7 --out "$tmp/b.png" --save-raw "$tmp/b.npy"
if [ "$rc" -eq 0 ] && cmp -s "$tmp/a.npy" "$tmp/b.npy" && cmp -s "$tmp/a.png" "$tmp/b.png"; then
    pass "the same seed twice gives identical npy and PNG bytes"
else
    fail "the same seed twice: exit $rc or different bytes"
fi
run cpu3 sample --model "$MODEL" $common --device cpu --seed 8 --out "$tmp/c.png" --save-raw "$tmp/c.npy"
if [ "$rc" -eq 0 ] && ! cmp -s "$tmp/a.npy" "$tmp/c.npy"; then
    pass "another seed gives other samples"
else
    fail "another seed: exit $rc or identical bytes"
fi

# DDIM with eta 0 is deterministic given x_T: with --init the seed must not matter.
run init1 sample --model "$MODEL" $common --device cpu --seed 1 --init "$tmp/a.npy" --out "$tmp/i1.png" --save-raw "$tmp/i1.npy"
run2rc=$rc
run init2 sample --model "$MODEL" $common --device cpu --seed 2 --init "$tmp/a.npy" --out "$tmp/i2.png" --save-raw "$tmp/i2.npy"
if [ "$run2rc" -eq 0 ] && [ "$rc" -eq 0 ] && cmp -s "$tmp/i1.npy" "$tmp/i2.npy" && ! cmp -s "$tmp/i1.npy" "$tmp/a.npy"; then
    pass "--init from a saved npy: ddim eta 0 output independent of the seed"
else
    fail "--init: exit $run2rc/$rc or outputs not as expected ($(show "$tmp/init2.err"))"
fi

run quiet sample --model "$MODEL" $common --device cpu --quiet --out "$tmp/q.png"
if [ "$rc" -eq 0 ] && [ ! -s "$tmp/quiet.err" ] && [ -s "$tmp/q.png" ]; then
    pass "--quiet prints nothing on success"
else
    fail "--quiet (exit $rc, stderr: $(show "$tmp/quiet.err"))"
fi

run ddpm sample --model "$MODEL" --device cpu --sampler ddpm --steps 4 --variance fixed_large --no-clip -n 1 \
    --out "$tmp/d.png" --save-raw "$tmp/d.npy"
expect_ok "ddpm sampler, 4 steps, fixed_large, --no-clip"

# info: the parameter count must equal the sum of the tensor sizes in the file's header.
params=$("$PY" - "$MODEL" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
h.pop('__metadata__', None)
total = 0
for t in h.values():
    k = 1
    for d in t['shape']:
        k *= d
    total += k
print(total)
EOF
)
run info info --model "$MODEL"
if [ "$rc" -eq 0 ] && [ -n "$params" ] && grep -qw -- "$params" "$tmp/info.out"; then
    pass "info prints the parameter count $params"
else
    fail "info: exit $rc, parameter count '$params' not in: $(show "$tmp/info.out")"
fi
run nodes info --model "$MODEL" --nodes
if [ "$rc" -eq 0 ] && grep -q 'conv_in' "$tmp/nodes.out" && grep -q 'conv_out' "$tmp/nodes.out" &&
    grep -q 'GFLOPs' "$tmp/nodes.out"; then
    pass "info --nodes lists the nodes ($(grep -c conv2d "$tmp/nodes.out") conv2d rows)"
else
    fail "info --nodes: exit $rc"
fi

run devices devices
ndev=$(grep -cE '^ *[0-9]+: ' "$tmp/devices.out")
if [ "$rc" -eq 0 ] && [ "$ndev" -ge 1 ]; then
    pass "devices lists $ndev device(s): $(grep -E '^ *[0-9]+: ' "$tmp/devices.out" | tr '\n' '|')"
else
    fail "devices: exit $rc, no device listed ($(show "$tmp/devices.err"))"
fi
if grep -qi 'llvmpipe' "$tmp/devices.out"; then
    pass "devices lists lavapipe (llvmpipe)"
else
    fail "devices does not list lavapipe (llvmpipe): is mesa-vulkan-drivers installed?"
fi

# Vulkan device 0: the U-Net and the update on the GPU; same seed, so close to the CPU samples.
run vk sample --model "$MODEL" $common --device 0 --seed 7 --out "$tmp/v.png" --save-raw "$tmp/v.npy"
if [ "$rc" -ne 0 ]; then
    fail "sample on Vulkan device 0: exit $rc ($(show "$tmp/vk.err"))"
elif "$PY" - "$tmp/v.npy" "$tmp/a.npy" >"$tmp/close.log" 2>&1 <<'EOF'; then
import sys
import numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
assert got.shape == want.shape, f'shapes {got.shape} {want.shape}'
atol, rtol = 2e-3, 2e-3
err = np.abs(got.astype(np.float64) - want)
bad = err > atol + rtol * np.abs(want)
i = np.unravel_index(np.argmax(err), err.shape)
print(f'max |vk - cpu| {err.max():.3g} at {i} (vk {got[i]:.6f} cpu {want[i]:.6f}), atol {atol} rtol {rtol}')
sys.exit(1 if bad.any() or not np.isfinite(got).all() else 0)
EOF
    pass "Vulkan device 0 matches the CPU: $(show "$tmp/close.log")"
else
    fail "Vulkan device 0 differs from the CPU: $(show "$tmp/close.log")"
fi
# With $DDPM_VALIDATION set (meson does) the Khronos layer watches the run: it must stay silent.
if grep -qi 'validation' "$tmp/vk.out" "$tmp/vk.err" "$tmp/devices.out" "$tmp/devices.err"; then
    fail "Vulkan validation messages: $(grep -hi 'validation' "$tmp/vk.out" "$tmp/vk.err" "$tmp/devices.out" "$tmp/devices.err" | head -n 1 | cut -c1-200)"
else
    pass "no Vulkan validation messages during devices and sampling (DDPM_VALIDATION=${DDPM_VALIDATION:-unset})"
fi

# Without --device: the best Vulkan GPU, else the CPU backend (a CPU-type Vulkan device such as lavapipe only
# when named); --device gpu: the best GPU or an error.
if grep '   type: ' "$tmp/devices.out" | grep -qv 'type: CPU,'; then want_default=gpu; else want_default=cpu; fi
env -u DDPM_DEVICE "$BIN" sample --model "$MODEL" $common --seed 7 --out "$tmp/d.png" >"$tmp/default.out" \
    2>"$tmp/default.err"
rc=$?
if [ "$want_default" = cpu ]; then
    if [ "$rc" -eq 0 ] && grep -q 'no usable Vulkan GPU.*running on the CPU backend' "$tmp/default.err" &&
        grep -q ' on cpu$' "$tmp/default.err"; then
        pass "no GPU: the default device is the CPU backend, not lavapipe"
    else
        fail "no GPU: default device (exit $rc: $(show "$tmp/default.err"))"
    fi
    run gpu sample --model "$MODEL" $common --device gpu --out "$tmp/g.png"
    if [ "$rc" -eq 1 ] && grep -q 'no usable Vulkan GPU' "$tmp/gpu.err" && [ ! -e "$tmp/g.png" ]; then
        pass "no GPU: --device gpu is an error: $(show "$tmp/gpu.err")"
    else
        fail "no GPU: --device gpu (exit $rc: $(show "$tmp/gpu.err"))"
    fi
elif [ "$rc" -eq 0 ] && ! grep -q ' on cpu$' "$tmp/default.err"; then
    pass "the default device is a Vulkan GPU: $(grep -h 'sampling' "$tmp/default.err")"
else
    fail "default device with a GPU present (exit $rc: $(show "$tmp/default.err"))"
fi

# Vulkan options: fp16 storage with the baseline limits, --verbose (memory, pipelines, time to first step)
run vk16 sample --model "$MODEL" $common --device 0 --seed 7 --precision fp16 --limits baseline --verbose \
    --out "$tmp/v16.png" --save-raw "$tmp/v16.npy"
if [ "$rc" -eq 0 ] && grep -q 'fp16 storage, baseline limits' "$tmp/vk16.err" &&
    grep -q 'time to first step' "$tmp/vk16.err" && grep -q 'pipelines in' "$tmp/vk16.err"; then
    pass "sample --precision fp16 --limits baseline --verbose: $(grep -h 'time to first' "$tmp/vk16.err")"
else
    fail "sample --precision fp16 --limits baseline --verbose: exit $rc ($(show "$tmp/vk16.err"))"
fi
if "$PY" - "$tmp/v16.npy" "$tmp/a.npy" >"$tmp/close16.log" 2>&1 <<'EOF'
import sys
import numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
err = np.abs(got - want)
print(f'max |vk fp16 - cpu| {err.max():.3g} (tolerance 5e-2)')
sys.exit(0 if got.shape == want.shape and err.max() <= 5e-2 else 1)
EOF
then
    pass "Vulkan fp16 matches the CPU: $(show "$tmp/close16.log")"
else
    fail "Vulkan fp16 differs from the CPU: $(show "$tmp/close16.log")"
fi
run info8 info --model "$MODEL" -n 8
if [ "$rc" -eq 0 ] && grep -q '^memory: *fp32, 8 images: .* MiB peak' "$tmp/info8.out" &&
    grep -q '^memory: *fp16, 8 images' "$tmp/info8.out"; then
    pass "info -n 8 prints the peak device memory: $(grep -h '^memory' "$tmp/info8.out" | head -n 1)"
else
    fail "info -n 8: exit $rc ($(show "$tmp/info8.out"))"
fi
for dev in 0 cpu; do
    run bench_$dev bench --model "$MODEL" -n 2 --device $dev --steps 2 --layers
    if [ "$rc" -eq 0 ] && grep -q 'ms per step, .* GFLOP/s' "$tmp/bench_$dev.out" &&
        grep -q 'conv_out' "$tmp/bench_$dev.out"; then
        pass "bench --device $dev: $(grep -h 'ms per step' "$tmp/bench_$dev.out")"
    else
        fail "bench --device $dev: exit $rc ($(show "$tmp/bench_$dev.err"))"
    fi
done

# ---- bad input ---------------------------------------------------------------------------------

bad=$tmp/bad
mkdir "$bad"

# expect_bad CODE DESCRIPTION ARGS...: ddpm-vk ARGS must exit with CODE (1 failure, 2 usage), print
# exactly one line "ddpm-vk: ..." on stderr, and leave nothing in $bad (no grid.png, no *.tmp.*).
expect_bad() {
    want=$1
    desc=$2
    shift 2
    "$BIN" "$@" >"$tmp/bad.out" 2>"$tmp/bad.err"
    rc=$?
    lines=$(wc -l <"$tmp/bad.err")
    left=$(ls -A "$bad")
    if [ "$rc" -eq "$want" ] && [ "$lines" -eq 1 ] && grep -q '^ddpm-vk: ' "$tmp/bad.err" && [ -z "$left" ]; then
        pass "$desc: exit $rc, $(show "$tmp/bad.err")"
    else
        fail "$desc: exit $rc (want $want), $lines stderr lines: $(show "$tmp/bad.err") files left: '$left'"
    fi
    rm -f "$bad"/* "$bad"/.[!.]* 2>/dev/null
}

out="--out $bad/grid.png --save-raw $bad/grid.npy"
cpu="--device cpu --sampler ddim --steps 2 -n 1"

# Hostile model files, crafted from the fixture by rewriting its header (python stdlib only).
"$PY" - "$MODEL" "$tmp" <<'EOF' || fail "crafting the hostile model files"
import json, struct, sys
src, d = sys.argv[1], sys.argv[2]
b = open(src, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
header = json.loads(b[8:8 + n])
data = b[8 + n:]
meta = header.pop('__metadata__')
names = sorted(header, key=lambda k: header[k]['data_offsets'][0])

def raw(path, hdr, body, hlen=None):
    h = json.dumps(hdr).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(f'{d}/{path}', 'wb') as f:
        f.write(struct.pack('<Q', len(h) if hlen is None else hlen) + h + body)

def tensors():  # name -> [dtype, shape, bytes]
    return {k: [header[k]['dtype'], list(header[k]['shape']),
                data[header[k]['data_offsets'][0]:header[k]['data_offsets'][1]]] for k in names}

def pack(path, ts, meta=meta):  # consistent offsets: only what the test changes is wrong
    hdr, body = {'__metadata__': meta}, b''
    for k, (dt, shape, blob) in ts.items():
        hdr[k] = {'dtype': dt, 'shape': shape, 'data_offsets': [len(body), len(body) + len(blob)]}
        body += blob
    raw(path, hdr, body)

def edit(path, fn):
    hdr = json.loads(json.dumps(header))
    fn(hdr)
    hdr['__metadata__'] = meta
    raw(path, hdr, data)

open(f'{d}/trunc_header.st', 'wb').write(b[:8 + n // 2])
open(f'{d}/trunc_data.st', 'wb').write(b[:len(b) - 100])
open(f'{d}/tiny.st', 'wb').write(b[:5])
raw('hlen_past_end.st', dict(header, __metadata__=meta), data, hlen=len(b) * 2)
first, second = names[0], names[1]
last = header[names[-1]]['data_offsets']
edit('offset_out.st', lambda h: h[names[-1]].update(data_offsets=[last[0] + 8, last[1] + 8]))
same = [k for k in names if k != first and header[k]['shape'] == header[first]['shape']][0]
edit('overlap.st', lambda h: h[same].update(data_offsets=header[first]['data_offsets']))
edit('absurd.st', lambda h: h[first].update(shape=[1 << 40]))
edit('absurd2.st', lambda h: h[first].update(shape=[1 << 40, 1 << 40]))
edit('bad_dtype.st', lambda h: h[first].update(dtype='I32'))
ts = tensors()
conv = 'conv_in.weight'
co, ci, kh, kw = ts[conv][1]
ts[conv][1] = [co, ci, kh * kw, 1]
pack('bad_shape.st', ts)
ts = tensors()
ts['conv_in.weight'][0] = 'F16'
ts['conv_in.weight'][2] = ts['conv_in.weight'][2][:len(ts['conv_in.weight'][2]) // 2]
pack('f16_ok.st', ts)  # F16 is a valid dtype: loads (checked below)
ts = tensors()
del ts['conv_out.bias']
pack('missing.st', ts)
ts = tensors()
ts['down_blocks.0.extra.weight'] = ['F32', [2], b'\0' * 8]
pack('unknown.st', ts)
pack('bad_config.st', tensors(), dict(meta, **{'ddpm.config': '{"in_channels": '}))
pack('no_config.st', tensors(), {'format': 'ddpm-vk'})
ts = tensors()
blk = json.loads(meta['ddpm.config'])
blk['in_channels'] = 4
pack('config_mismatch.st', ts, dict(meta, **{'ddpm.config': json.dumps(blk)}))
open(f'{d}/garbage.npy', 'wb').write(b'\x93NUMPY\x01\x00\x10\x00{not a dict}   \n' + b'\0' * 12)
EOF

expect_bad 1 "missing model file" sample --model "$tmp/no-such.safetensors" $cpu $out
expect_bad 1 "model truncated inside the header" sample --model "$tmp/trunc_header.st" $cpu $out
expect_bad 1 "model truncated inside the data" sample --model "$tmp/trunc_data.st" $cpu $out
expect_bad 1 "model of 5 bytes" sample --model "$tmp/tiny.st" $cpu $out
expect_bad 1 "header length past the end" sample --model "$tmp/hlen_past_end.st" $cpu $out
expect_bad 1 "data offsets out of range" sample --model "$tmp/offset_out.st" $cpu $out
expect_bad 1 "overlapping data offsets" sample --model "$tmp/overlap.st" $cpu $out
expect_bad 1 "absurd shape 2^40" sample --model "$tmp/absurd.st" $cpu $out
expect_bad 1 "absurd shape 2^40 x 2^40" sample --model "$tmp/absurd2.st" $cpu $out
expect_bad 1 "unsupported dtype I32" sample --model "$tmp/bad_dtype.st" $cpu $out
expect_bad 1 "tensor shape not matching the config" sample --model "$tmp/bad_shape.st" $cpu $out
expect_bad 1 "missing tensor" sample --model "$tmp/missing.st" $cpu $out
expect_bad 1 "unknown tensor" sample --model "$tmp/unknown.st" $cpu $out
expect_bad 1 "config JSON broken" sample --model "$tmp/bad_config.st" $cpu $out
expect_bad 1 "no config in the metadata" sample --model "$tmp/no_config.st" $cpu $out
expect_bad 1 "config not matching the weights" sample --model "$tmp/config_mismatch.st" $cpu $out
expect_bad 1 "info on a truncated model" info --model "$tmp/trunc_data.st"
expect_bad 1 "not a model (an npy file)" sample --model "$tmp/a.npy" $cpu $out
run f16 sample --model "$tmp/f16_ok.st" $cpu --out "$tmp/f16.png"
expect_ok "a tensor stored as F16 loads (control for the hostile files)"

expect_bad 1 "unknown device" sample --model "$MODEL" --device nonexistent-gpu --sampler ddim --steps 2 -n 1 $out
expect_bad 2 "-n 0" sample --model "$MODEL" $cpu -n 0 $out
expect_bad 2 "-n -3" sample --model "$MODEL" $cpu -n -3 $out
expect_bad 2 "-n 1.5" sample --model "$MODEL" $cpu -n 1.5 $out
expect_bad 2 "-n 99999999999999999999" sample --model "$MODEL" $cpu -n 99999999999999999999 $out
expect_bad 2 "--steps 0" sample --model "$MODEL" --device cpu --sampler ddim --steps 0 $out
expect_bad 2 "--steps abc" sample --model "$MODEL" --device cpu --sampler ddim --steps abc $out
expect_bad 2 "--steps '3 '" sample --model "$MODEL" --device cpu --sampler ddim --steps "3 " $out
expect_bad 1 "--steps beyond the training steps" sample --model "$MODEL" --device cpu --sampler ddim --steps 5000 $out
expect_bad 2 "--eta 2" sample --model "$MODEL" $cpu --eta 2 $out
expect_bad 2 "--eta -0.1" sample --model "$MODEL" $cpu --eta -0.1 $out
expect_bad 2 "--eta nan" sample --model "$MODEL" $cpu --eta nan $out
expect_bad 2 "--eta with the ddpm sampler" sample --model "$MODEL" --device cpu --sampler ddpm --eta 0.5 $out
expect_bad 2 "--seed -1" sample --model "$MODEL" $cpu --seed -1 $out
expect_bad 2 "--seed 2^64" sample --model "$MODEL" $cpu --seed 18446744073709551616 $out
expect_bad 2 "unknown sampler" sample --model "$MODEL" --device cpu --sampler euler $out
expect_bad 2 "unknown spacing" sample --model "$MODEL" $cpu --spacing cubic $out
expect_bad 2 "unknown variance" sample --model "$MODEL" --device cpu --sampler ddpm --variance learned $out
expect_bad 2 "unknown option" sample --model "$MODEL" $cpu --frobnicate $out
expect_bad 2 "stray argument" sample --model "$MODEL" $cpu stray $out
expect_bad 2 "missing argument at the end" sample --model "$MODEL" $cpu $out --steps
expect_bad 2 "missing argument before an option" sample --model "$MODEL" $cpu --init $out
expect_bad 2 "unknown command" frobnicate
expect_bad 2 "--precision fp64" sample --model "$MODEL" $cpu --precision fp64 $out
expect_bad 2 "--limits tiny" sample --model "$MODEL" $cpu --limits tiny $out
expect_bad 2 "--verbose with --quiet" sample --model "$MODEL" $cpu --verbose --quiet $out
expect_bad 2 "bench -n 0" bench --model "$MODEL" -n 0
expect_bad 2 "info -n x" info --model "$MODEL" -n x
expect_bad 1 "bench with a missing model" bench --model "$tmp/no-such.safetensors"
expect_bad 1 "bench on a missing device" bench --model "$MODEL" --device no-such-gpu
expect_bad 2 "unknown option of devices" devices --all
expect_bad 1 "--out into a missing directory" sample --model "$MODEL" $cpu --out "$bad/no/dir/grid.png"
expect_bad 1 "--out is a directory" sample --model "$MODEL" $cpu --out "$bad"
expect_bad 1 "--init: no such file" sample --model "$MODEL" $cpu --init "$tmp/no-such.npy" $out
expect_bad 1 "--init: not an npy file" sample --model "$MODEL" $cpu --init "$MODEL" $out
expect_bad 1 "--init: broken npy header" sample --model "$MODEL" $cpu --init "$tmp/garbage.npy" $out
expect_bad 1 "--init: n not matching -n" sample --model "$MODEL" --device cpu --sampler ddim --steps 2 -n 3 \
    --init "$tmp/a.npy" $out
"$PY" -c "import numpy as np, sys; np.save(sys.argv[1], np.zeros((2, 3, 8, 8), np.float32)); \
np.save(sys.argv[2], np.zeros((2, 3, 16, 16))); \
a = np.zeros((2, 3, 16, 16), np.float32); a[1, 2, 3, 4] = np.nan; np.save(sys.argv[3], a)" \
    "$tmp/small.npy" "$tmp/f64.npy" "$tmp/nan.npy"
expect_bad 1 "--init: shape not matching (n, C, H, W)" sample --model "$MODEL" $cpu -n 2 --init "$tmp/small.npy" $out
expect_bad 1 "--init: float64 npy" sample --model "$MODEL" $cpu -n 2 --init "$tmp/f64.npy" $out
expect_bad 1 "--init: NaN inside" sample --model "$MODEL" $cpu -n 2 --init "$tmp/nan.npy" $out

checks_done
