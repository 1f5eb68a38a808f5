#!/usr/bin/env bash
# The whole GPU path in a few minutes, for a person with a GPU: both stages in fp16 and in bf16, an interrupted
# run continued with --resume, torch.compile on and off, colorize and export. One PASS/FAIL line per step, with
# the step's images/s where it trains.
#
#   bash benchmarks/gpu_smoke.sh [PHOTOS] [OUT]      # PHOTOS: a folder of colour photos (default: the sample photos)
#
# Nothing here is needed on a CPU: CI runs the same code paths on the CPU (tests/test_device.py).
set -uo pipefail
PHOTOS=${1:-}
OUT=${2:-runs/gpu-smoke}
mkdir -p "$OUT"
if [ -z "$PHOTOS" ]; then PHOTOS="$OUT/photos"; colorgan sample-photos "$PHOTOS" >/dev/null; fi
colorgan env | tee "$OUT/env.txt"
grep -q "^cuda:0" "$OUT/env.txt" || { echo "FAIL no CUDA GPU seen: this script checks the GPU path"; exit 1; }
N=$(python -c "import sys; from colorgan.photos import find_photos; print(len(find_photos(sys.argv[1])))" "$PHOTOS")
COMMON=(--set data.size=128 --set data.bs=16 --set model.pretrained=false)
failed=0

step() {  # step NAME IMAGES COMMAND...: run, time, print PASS/FAIL and images/s
    local name=$1 images=$2; shift 2
    local start end
    start=$(date +%s.%N)
    if "$@" >"$OUT/$name.log" 2>&1; then
        end=$(date +%s.%N)
        awk -v n="$name" -v i="$images" -v s="$start" -v e="$end" \
            'BEGIN { t = e - s; printf "PASS %-22s %6.1f s", n, t; if (i > 0) printf "  %7.1f images/s", i / t; print "" }'
    else
        failed=1
        echo "FAIL $name (see $OUT/$name.log)"; tail -n 5 "$OUT/$name.log" | sed 's/^/     /'
    fi
}

for p in fp16 bf16; do
    step "pretrain-$p" $((N * 2)) colorgan pretrain "$PHOTOS" --out "$OUT/g-$p" --overwrite "${COMMON[@]}" \
        --set learner.precision=$p --set fit.n_epoch=2
    step "resume-$p" "$N" colorgan pretrain "$PHOTOS" --out "$OUT/g-$p" --resume --set fit.n_epoch=3
    step "gan-$p" $((N * 2)) colorgan gan-finetune "$PHOTOS" --generator "$OUT/g-$p" --out "$OUT/gan-$p" \
        --overwrite --set data.size=128 --set data.bs=16 --set learner.precision=$p --set fit.n_epoch=2
    step "gan-resume-$p" "$N" colorgan gan-finetune "$PHOTOS" --generator "$OUT/g-$p" --out "$OUT/gan-$p" \
        --resume --set fit.n_epoch=3
done
step "pretrain-compile" $((N * 2)) colorgan pretrain "$PHOTOS" --out "$OUT/g-compile" --overwrite "${COMMON[@]}" \
    --set learner.compile=true --set fit.n_epoch=2
step "gan-compile" $((N * 2)) colorgan gan-finetune "$PHOTOS" --generator "$OUT/g-compile" --out "$OUT/gan-compile" \
    --overwrite --set data.size=128 --set data.bs=16 --set learner.compile=true --set fit.n_epoch=2
step "colorize" "$N" colorgan colorize "$OUT/gan-bf16" "$PHOTOS" --out "$OUT/colorized" --overwrite
step "evaluate" "$N" colorgan evaluate "$OUT/gan-bf16" "$PHOTOS" --out "$OUT/eval" --baseline gray
step "export" 0 colorgan export "$OUT/gan-bf16" --onnx "$OUT/colorgan.onnx"
[ $failed = 0 ] && echo "all steps passed" || echo "some steps failed"
exit $failed
