#!/bin/sh
# test_train_cli.sh: ddpm-train end to end on tiny data it writes itself: kill-and-resume (--stop-after and
# SIGTERM) ends bit-identical to an uninterrupted run; bad input gives one error line, non-zero exit, no file.
#   tests/test_train_cli.sh path/to/ddpm-train path/to/ddpm-vk    (/usr/bin/python3, stdlib only)
# shellcheck disable=SC2086 # $tiny is split into words on purpose
set -u

BIN=${1:?usage: test_train_cli.sh path/to/ddpm-train path/to/ddpm-vk}
VK=${2:?usage: test_train_cli.sh path/to/ddpm-train path/to/ddpm-vk}
PY=/usr/bin/python3
export OMP_NUM_THREADS=2

suite=train
. "$(dirname "$0")/checks.sh"

# ---- tiny data: IDX (raw, gzip, hostile) and PNG folders, written with the python stdlib ----------------
$PY - "$tmp" <<'EOF' || exit 1
import gzip, os, struct, sys, zlib
d = sys.argv[1]
n, h, w = 10, 8, 8
px = bytes((i * 37 + (i // 64) * 11) % 256 for i in range(n * h * w))
idx = struct.pack('>IIII', 0x803, n, h, w) + px
open(f'{d}/img.idx', 'wb').write(idx)
open(f'{d}/img.idx.gz', 'wb').write(gzip.compress(idx, mtime=0))
open(f'{d}/labels.idx', 'wb').write(struct.pack('>II', 0x801, n) + bytes(range(n)))
open(f'{d}/badmagic.idx', 'wb').write(struct.pack('>IIII', 0x804, n, h, w) + px)
open(f'{d}/trunc.idx', 'wb').write(idx[:-7])
open(f'{d}/trunc.idx.gz', 'wb').write(gzip.compress(idx, mtime=0)[:-30])
def png(path, w, h, rgb):  # 8-bit RGB, filter 0 rows
    raw = b''.join(b'\0' + bytes(rgb(x, y)[c] for x in range(w) for c in range(3)) for y in range(h))
    chunk = lambda t, b: struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
                           + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
for name in ('pngs', 'mixed', 'empty'):
    os.mkdir(f'{d}/{name}')
for k in range(5):
    png(f'{d}/pngs/{k}.png', 12, 10, lambda x, y: ((x * 20 + k * 30) % 256, y * 25, (x + y) * 10))
    png(f'{d}/mixed/{k}.png', 12, 10, lambda x, y: (x * 20, y * 25, 0))
open(f'{d}/mixed/notes.txt', 'w').write('not an image\n')
EOF

tiny="--size 8 --blocks 8,16 --attn 0,1 --groups 4 --batch 4 --warmup 2 --flip --dropout 0.1 --seed 7
 --sample-n 2 --sample-steps 2 --ckpt-minutes 0 --quiet"

# run NAME ARGS...: ddpm-train with stderr in $tmp/NAME.err; sets $rc
run() {
    name=$1
    shift
    "$BIN" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}

# same_state A B: the checkpoints' F32 tensors (weights, EMA, AdamW moments) and step are identical
same_state() {
    $PY - "$1" "$2" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop('__metadata__')
    return meta, {k: b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]] for k, v in h.items()}
(ma, ta), (mb, tb) = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in ('weights', 'ema', 'adam_m', 'adam_v') if ta[k] != tb[k]]
if ma['step'] != mb['step'] or bad or len(ta['weights']) == 0:
    sys.exit(f"step {ma['step']} vs {mb['step']}, differing: {bad}")
EOF
}

# ---- good runs: an uninterrupted run against --stop-after + --resume -----------------------------------------
run full --data "$tmp/img.idx.gz" --out "$tmp/full" --steps 6 --sample-every 3 $tiny
if [ $rc -eq 0 ] && [ -s "$tmp/full/model.safetensors" ] && [ -s "$tmp/full/samples/step-0000003.png" ] &&
    [ -s "$tmp/full/samples/step-0000006.png" ] && [ "$(wc -l <"$tmp/full/loss.csv")" -eq 7 ]; then
    pass "6 steps: checkpoint, EMA model, 2 sample grids, 6 loss rows"
else
    fail "6 steps (rc $rc): $(show "$tmp/full.err")"
fi
run half --data "$tmp/img.idx.gz" --out "$tmp/half" --steps 6 --sample-every 3 --stop-after 3 $tiny
rc1=$rc
run resume --data "$tmp/img.idx.gz" --out "$tmp/half" --steps 6 --sample-every 3 --resume $tiny
if [ $rc1 -eq 0 ] && [ $rc -eq 0 ] && same_state "$tmp/full/checkpoint.safetensors" "$tmp/half/checkpoint.safetensors" &&
    cmp -s "$tmp/full/model.safetensors" "$tmp/half/model.safetensors" &&
    cmp -s "$tmp/full/loss.csv" "$tmp/half/loss.csv"; then
    pass "--stop-after 3 + --resume to 6: identical weights, EMA, moments, exported model bytes and loss rows"
else
    fail "stop/resume (rc $rc1, $rc): $(show "$tmp/half.err") $(show "$tmp/resume.err")"
fi
# the raw IDX gives the same data as the gzip one (same crc in the config): resuming across them is allowed
run raw --data "$tmp/img.idx" --out "$tmp/half" --steps 7 --resume $tiny
[ $rc -eq 0 ] && pass "raw IDX == gzip IDX (resume accepted)" || fail "raw IDX resume: $(show "$tmp/raw.err")"

# SIGTERM mid-run: the checkpoint it writes resumes to the same state as an uninterrupted run
"$BIN" --data "$tmp/img.idx.gz" --out "$tmp/sig" --steps 1000000 --sample-every 0 $tiny 2>"$tmp/sig.err" &
pid=$!
for _ in $(seq 1 1200); do # up to a minute on a loaded machine; the handler is set before the first row
    [ -f "$tmp/sig/loss.csv" ] && [ "$(wc -l <"$tmp/sig/loss.csv")" -ge 3 ] && break
    sleep 0.05
done
kill -TERM $pid
wait $pid
rc=$?
k=$(sed -n 's/.*stopped at step \([0-9]*\) (SIGTERM).*/\1/p' "$tmp/sig.err")
if [ $rc -eq 0 ] && [ -n "$k" ]; then
    steps=$((k + 3))
    run sigres --data "$tmp/img.idx.gz" --out "$tmp/sig" --steps $steps --sample-every 0 --resume $tiny
    rc1=$rc
    run sigfull --data "$tmp/img.idx.gz" --out "$tmp/sigfull" --steps $steps --sample-every 0 $tiny
    if [ $rc1 -eq 0 ] && [ $rc -eq 0 ] &&
        same_state "$tmp/sig/checkpoint.safetensors" "$tmp/sigfull/checkpoint.safetensors" &&
        cmp -s "$tmp/sig/model.safetensors" "$tmp/sigfull/model.safetensors"; then
        pass "SIGTERM at step $k + --resume to $steps == $steps uninterrupted"
    else
        fail "SIGTERM resume (rc $rc1, $rc): $(show "$tmp/sigres.err") $(show "$tmp/sigfull.err")"
    fi
else
    fail "SIGTERM did not stop with a checkpoint (rc $rc): $(show "$tmp/sig.err")"
fi

# v_prediction and a PNG folder (12x10 RGB -> 8x8 grey, resized + center-cropped)
run png --data "$tmp/pngs" --out "$tmp/png" --steps 2 --sample-every 0 --prediction v_prediction $tiny
[ $rc -eq 0 ] && [ -s "$tmp/png/model.safetensors" ] && pass "PNG folder, v_prediction" ||
    fail "PNG folder (rc $rc): $(show "$tmp/png.err")"
# the export is a ddpm-vk model: it samples on the CPU
"$VK" sample --model "$tmp/png/model.safetensors" --device cpu --sampler ddim --steps 2 -n 2 \
    --out "$tmp/png/vk.png" >"$tmp/vk.out" 2>"$tmp/vk.err"
[ $? -eq 0 ] && [ -s "$tmp/png/vk.png" ] && grep -q v_prediction "$tmp/png/model.safetensors" &&
    pass "ddpm-vk samples the exported model (v_prediction in its scheduler)" ||
    fail "ddpm-vk on the export: $(show "$tmp/vk.err")"

# ---- bad input: one error line, exit 1 or 2, nothing written or overwritten ---------------------------------
cp "$tmp/full/checkpoint.safetensors" "$tmp/ckpt.orig"
cp "$tmp/full/model.safetensors" "$tmp/model.orig"
# bad NAME PATTERN ARGS...: fails with one line matching PATTERN; the run folder $tmp/full is untouched
bad() {
    name=$1
    pat=$2
    shift 2
    run "$name" "$@"
    lines=$(wc -l <"$tmp/$name.err")
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -q -- "$pat" "$tmp/$name.err" &&
        cmp -s "$tmp/ckpt.orig" "$tmp/full/checkpoint.safetensors" &&
        cmp -s "$tmp/model.orig" "$tmp/full/model.safetensors" && [ ! -e "$tmp/none" ] &&
        [ -z "$(find "$tmp" -name '*.tmp.*')" ]; then
        pass "$name: $(cat "$tmp/$name.err")"
    else
        fail "$name (rc $rc, $lines lines, want '$pat'): $(show "$tmp/$name.err")"
    fi
}
bad magic "magic 0x00000804" --data "$tmp/badmagic.idx" --out "$tmp/full" --resume --steps 8 $tiny
bad magic-new "magic 0x00000804" --data "$tmp/badmagic.idx" --out "$tmp/none" --steps 8 $tiny
bad labels-as-images "magic 0x00000801" --data "$tmp/labels.idx" --out "$tmp/none" --steps 8 $tiny
bad truncated "truncated IDX data" --data "$tmp/trunc.idx" --out "$tmp/full" --resume --steps 8 $tiny
bad truncated-gz "truncated" --data "$tmp/trunc.idx.gz" --out "$tmp/full" --resume --steps 8 $tiny
bad missing-data "No such file" --data "$tmp/nothing.idx" --out "$tmp/none" --steps 8 $tiny
bad non-image "notes.txt: not a PNG/JPEG image" --data "$tmp/mixed" --out "$tmp/none" --steps 8 $tiny
bad no-images "holds no images" --data "$tmp/empty" --out "$tmp/none" --steps 8 $tiny
bad other-config "checkpoint of another config: it has 'lr=0.00029999999999999997', this run has 'lr=0.001'" \
    --data "$tmp/img.idx.gz" --out "$tmp/full" --resume --steps 8 --lr 1e-3 $tiny
bad other-model "checkpoint of another config" --data "$tmp/img.idx.gz" --out "$tmp/full" --resume --steps 8 \
    $tiny --blocks 8,8
bad other-data "checkpoint of another config: it has 'data=10x1x8x8" --data "$tmp/pngs" --out "$tmp/full" \
    --resume --steps 8 $tiny
mkdir -p "$tmp/notckpt" "$tmp/cutckpt"
cp "$tmp/full/model.safetensors" "$tmp/notckpt/checkpoint.safetensors"
head -c 5000 "$tmp/full/checkpoint.safetensors" >"$tmp/cutckpt/checkpoint.safetensors"
bad not-a-checkpoint "not a ddpm-train checkpoint" --data "$tmp/img.idx.gz" --out "$tmp/notckpt" --resume --steps 8 $tiny
bad cut-checkpoint "cutckpt/checkpoint.safetensors" --data "$tmp/img.idx.gz" --out "$tmp/cutckpt" --resume --steps 8 \
    $tiny
bad no-resume "pass --resume" --data "$tmp/img.idx.gz" --out "$tmp/full" --steps 8 $tiny
bad resume-nothing "--resume: .*No such file" --data "$tmp/img.idx.gz" --out "$tmp/none" --resume --steps 8 $tiny
bad unwritable-out "cannot create the folder" --data "$tmp/img.idx.gz" --out "$tmp/ckpt.orig/run" --steps 8 $tiny
bad unwritable-export "cannot create the folder" --data "$tmp/img.idx.gz" --out "$tmp/full" --resume --steps 8 \
    --export "$tmp/ckpt.orig/x/m.safetensors" $tiny
bad bad-blocks "does not divide\|groups" --data "$tmp/img.idx.gz" --out "$tmp/none" --steps 8 $tiny --blocks 6,16
bad attn-count "--attn has 1 entries for 2 levels" --data "$tmp/img.idx.gz" --out "$tmp/none" --steps 8 $tiny --attn 1
bad bad-number "--lr: 'x' is not a number" --data "$tmp/img.idx.gz" --out "$tmp/none" --steps 8 $tiny --lr x
bad unknown-option "unknown option '--bogus'" --data "$tmp/img.idx.gz" --out "$tmp/none" --bogus 1 $tiny

checks_done
