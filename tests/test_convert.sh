#!/bin/sh
# test_convert.sh: the ddpm-convert command end to end: every fixture layout converted and sampled with
# ddpm-vk, --inspect, and bad input (one error line, non-zero exit, no output file left behind).
#   tests/test_convert.sh path/to/ddpm-convert path/to/ddpm-vk    (DDPM_FIXTURES=tests/fixtures)
set -u

CONV=${1:?usage: test_convert.sh path/to/ddpm-convert path/to/ddpm-vk}
VK=${2:?usage: test_convert.sh path/to/ddpm-convert path/to/ddpm-vk}
FIX=${DDPM_FIXTURES:?DDPM_FIXTURES must name tests/fixtures}
C=$FIX/convert
CIFAR_CFG=$C/cifar_pipeline/unet/config.json
CELEBA_CFG=$C/celeba_pipeline/unet/config.json

suite=convert
. "$(dirname "$0")/checks.sh"

# run NAME PROGRAM ARGS...: output in $tmp/NAME.out / .err, status in $rc
run() {
    name=$1
    shift
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}

# ---- good conversions: each converted file loads in ddpm-vk and samples --------------------------

# convert NAME IN [OPTIONS...]: converts IN into $tmp/NAME.safetensors, checks ddpm-vk info and a
# short CPU DDIM run on it
convert() {
    cname=$1
    in=$2
    shift 2
    run "$cname" "$CONV" "$in" "$tmp/$cname.safetensors" "$@"
    if [ "$rc" -ne 0 ] || [ ! -s "$tmp/$cname.safetensors" ]; then
        fail "convert $cname (exit $rc: $(show "$tmp/$cname.err"))"
        return
    fi
    pass "convert $cname: $(grep '^wrote' "$tmp/$cname.out")"
    run "$cname-info" "$VK" info --model "$tmp/$cname.safetensors"
    if [ "$rc" -eq 0 ] && grep -q '^params:' "$tmp/$cname-info.out"; then
        pass "ddpm-vk info $cname: $(grep '^params:' "$tmp/$cname-info.out")"
    else
        fail "ddpm-vk info $cname (exit $rc: $(show "$tmp/$cname-info.err"))"
    fi
}

convert pipeline "$C/cifar_pipeline"
convert flat "$C/cifar_flat" --dtype f16
convert old_attn "$C/cifar_old_attn.safetensors" --config "$CIFAR_CFG"
convert orig "$C/cifar_orig.ckpt" --config "$CIFAR_CFG" --scheduler "$C/cifar_pipeline/scheduler/scheduler_config.json"
convert celeba_unet "$C/celeba_pipeline/unet" --dtype f16
convert celeba_orig "$C/celeba_orig_bf16.pt" --config "$CELEBA_CFG"
convert celeba_old "$C/celeba_old_attn_bf16.safetensors" --config "$CELEBA_CFG"

# the folder's scheduler becomes the model's default schedule
if grep -q 'squaredcos_cap_v2.*T 500, variance fixed_large, clip no.*prediction v_prediction' "$tmp/flat-info.out"; then
    pass "cifar_flat's scheduler_config.json is the converted model's schedule"
else
    fail "cifar_flat's schedule ($(show "$tmp/flat-info.out"))"
fi
if grep -q 'F16' "$tmp/flat.out"; then pass "--dtype f16 reported"; else fail "--dtype f16 ($(show "$tmp/flat.out"))"; fi

# a converted model samples: DDPM from the pipeline's config, and DDIM on the 256 structure
run sample-ddpm "$VK" sample --model "$tmp/pipeline.safetensors" --device cpu --sampler ddpm --steps 4 -n 2 \
    --seed 1 --quiet --out "$tmp/ddpm.png"
if [ "$rc" -eq 0 ] && [ -s "$tmp/ddpm.png" ]; then pass "ddpm-vk sample (ddpm) on a converted model"; else
    fail "sample (ddpm) (exit $rc: $(show "$tmp/sample-ddpm.err"))"
fi
run sample-ddim "$VK" sample --model "$tmp/celeba_orig.safetensors" --device cpu --sampler ddim --steps 2 -n 2 \
    --seed 1 --quiet --out "$tmp/ddim.png" --save-raw "$tmp/ddim-cpu.npy"
if [ "$rc" -eq 0 ] && [ -s "$tmp/ddim.png" ]; then pass "ddpm-vk sample (ddim) on a converted original-port model"; else
    fail "sample (ddim) (exit $rc: $(show "$tmp/sample-ddim.err"))"
fi
# the same on Vulkan device 0 (lavapipe in CI; validation layer on): close to the CPU samples
run sample-vk "$VK" sample --model "$tmp/celeba_orig.safetensors" --device 0 --sampler ddim --steps 2 -n 2 \
    --seed 1 --quiet --out "$tmp/ddim-vk.png" --save-raw "$tmp/ddim-vk.npy"
if [ "$rc" -ne 0 ]; then
    fail "sample on Vulkan device 0 (exit $rc: $(show "$tmp/sample-vk.err"))"
elif /usr/bin/python3 - "$tmp/ddim-vk.npy" "$tmp/ddim-cpu.npy" >"$tmp/close.log" 2>&1 <<'EOF'; then
import sys
import numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
assert got.shape == want.shape == (2, 3, 32, 32), f'shapes {got.shape} {want.shape}'
err = np.abs(got.astype(np.float64) - want)
print(f'max |vk - cpu| {err.max():.3g}')
sys.exit(1 if (err > 2e-3 + 2e-3 * np.abs(want)).any() or not np.isfinite(got).all() else 0)
EOF
    pass "converted model on Vulkan device 0 matches the CPU: $(show "$tmp/close.log")"
else
    fail "converted model on Vulkan device 0 differs from the CPU: $(show "$tmp/close.log")"
fi
if grep -qi 'validation' "$tmp/sample-vk.out" "$tmp/sample-vk.err"; then
    fail "Vulkan validation messages: $(grep -hi 'validation' "$tmp/sample-vk.err" | head -n 1 | cut -c1-200)"
else
    pass "no Vulkan validation messages (DDPM_VALIDATION=${DDPM_VALIDATION:-unset})"
fi

# F32 conversions of the same weights agree byte for byte whatever the layout they came from:
# the F16 safetensors with old names and the F16 .bin of the flat folder hold the same tensors
run re1 "$CONV" "$C/cifar_old_attn.safetensors" "$tmp/same1.safetensors" --config "$CIFAR_CFG"
run re2 "$CONV" "$C/cifar_flat/diffusion_pytorch_model.bin" "$tmp/same2.safetensors" --config "$CIFAR_CFG"
run ins1 "$CONV" --inspect "$tmp/same1.safetensors"
run ins2 "$CONV" --inspect "$tmp/same2.safetensors"
if [ "$rc" -eq 0 ] && [ -n "$(grep '^checksum' "$tmp/ins1.out")" ] &&
    [ "$(grep '^checksum' "$tmp/ins1.out")" = "$(grep '^checksum' "$tmp/ins2.out")" ]; then
    pass "old-names safetensors and .bin give the same tensors: $(grep '^checksum' "$tmp/ins1.out" | cut -c1-30)"
else
    fail "same weights, same checksum ($(show "$tmp/ins1.out") / $(show "$tmp/ins2.out"))"
fi

# ---- --inspect ------------------------------------------------------------------------------------

run inspect "$CONV" --inspect "$C/cifar_orig.ckpt" --config "$CIFAR_CFG"
if [ "$rc" -eq 0 ] && grep -q '^params:     36787$' "$tmp/inspect.out" &&
    grep -q 'up.3.upsample.conv.weight *-> up_blocks.0.upsamplers.0.conv.weight' "$tmp/inspect.out" &&
    grep -q '^check:      ok' "$tmp/inspect.out" && grep -q 'under "module"' "$tmp/inspect.out"; then
    pass "--inspect on an original-port .ckpt: table, mapping, params, binding"
else
    fail "--inspect .ckpt (exit $rc: $(show "$tmp/inspect.out") $(show "$tmp/inspect.err"))"
fi
run inspect-native "$CONV" --inspect "$tmp/pipeline.safetensors"
if [ "$rc" -eq 0 ] && grep -q 'ddpm-vk native' "$tmp/inspect-native.out" &&
    grep -q '^check:      ok' "$tmp/inspect-native.out"; then
    pass "--inspect on a native file"
else
    fail "--inspect native (exit $rc: $(show "$tmp/inspect-native.out"))"
fi
run help "$CONV" --help
if [ "$rc" -eq 0 ] && grep -q '^usage: ddpm-convert' "$tmp/help.out"; then pass "--help"; else fail "--help"; fi

# ---- bad input: one line on stderr, exit != 0, no output file --------------------------------------

# refuse NAME EXPECTED-SUBSTRING ARGS...: output would go to $tmp/bad.safetensors
refuse() {
    rname=$1
    want=$2
    shift 2
    rm -f "$tmp/bad.safetensors"
    run "$rname" "$CONV" "$@"
    lines=$(wc -l <"$tmp/$rname.err")
    left=$(find "$tmp" -name 'bad.safetensors*' | wc -l)
    if [ "$rc" -ne 0 ] && [ "$lines" -eq 1 ] && [ "$left" -eq 0 ] && grep -q -- "$want" "$tmp/$rname.err"; then
        pass "refused $rname: $(cut -c1-160 "$tmp/$rname.err")"
    else
        fail "$rname: exit $rc, $lines error lines, $left output files: $(show "$tmp/$rname.err")"
    fi
}

refuse bad-shape "conv_in.weight has shape" "$C/cifar_pipeline" "$tmp/bad.safetensors" --config "$C/bad_shape_config.json"
refuse wrong-config "the weights have 4 levels" "$C/cifar_orig.ckpt" "$tmp/bad.safetensors" --config "$CELEBA_CFG"
refuse evil-pickle "system" "$C/evil_system.bin" "$tmp/bad.safetensors" --config "$CIFAR_CFG"
refuse short-storage "storage" "$C/evil_short_storage.bin" "$tmp/bad.safetensors" --config "$CIFAR_CFG"
refuse entry-outside "outside" "$C/evil_offset.bin" "$tmp/bad.safetensors" --config "$CIFAR_CFG"
refuse inspect-evil "system" --inspect "$C/evil_system.bin"
refuse no-config "--config" "$C/cifar_orig.ckpt" "$tmp/bad.safetensors"
refuse ddim-list "--select" "$C/ddim_list.ckpt" "$tmp/bad.safetensors" --config "$CIFAR_CFG"
refuse no-input "no such file" "$tmp/nothing" "$tmp/bad.safetensors"
refuse bad-dtype "--dtype" "$C/cifar_pipeline" "$tmp/bad.safetensors" --dtype bf16
refuse unknown-option "unknown option" "$C/cifar_pipeline" "$tmp/bad.safetensors" --fast
refuse one-arg "need IN and OUT" "$C/cifar_pipeline"
refuse missing-value "needs a value" "$C/cifar_pipeline" "$tmp/bad.safetensors" --config
mkdir -p "$tmp/outdir"
refuse out-is-dir "is a folder" "$C/cifar_pipeline" "$tmp/outdir"
rmdir "$tmp/outdir"
head -c 60000 "$C/cifar_flat/diffusion_pytorch_model.bin" >"$tmp/cut.bin"
refuse truncated-zip "cut.bin" "$tmp/cut.bin" "$tmp/bad.safetensors" --config "$CIFAR_CFG"
# a failed conversion keeps an existing output untouched
cp "$tmp/pipeline.safetensors" "$tmp/keep.safetensors"
run keep "$CONV" "$C/cifar_pipeline" "$tmp/keep.safetensors" --config "$C/bad_shape_config.json"
if [ "$rc" -ne 0 ] && cmp -s "$tmp/keep.safetensors" "$tmp/pipeline.safetensors"; then
    pass "a refused conversion leaves an existing OUT as it was"
else
    fail "existing OUT after a refused conversion (exit $rc)"
fi
if [ ! -e ddpm_pwned.txt ] && [ ! -e "$tmp/ddpm_pwned.txt" ]; then pass "the evil pickle ran nothing"; else
    fail "the evil pickle ran os.system"
fi

checks_done
