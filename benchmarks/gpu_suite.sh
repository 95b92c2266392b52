#!/usr/bin/env bash
# Every GPU figure and GPU check pdseg needs, in one run: a machine with a CUDA GPU is lent to few
# sessions and for little time (15 minutes of device time, 10 minutes a command), so the whole list
# is scripted here and needs one call.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [DATA_DIR]
#
# OUT_DIR receives one file per step (markdown tables, JSON, training CSVs, masks), its stderr, and
# suite.log; with ARCHIVE=FILE.tar.gz the whole folder is also packed into that one file at the end
# (the device tool brings back at most 8 files). DATA_DIR holds davis16-train/ and davis16-eval/
# (default: ../shared/data); the training and eval steps are skipped when it is absent. Each step is
# timed, stopped after STEP_TIMEOUT seconds (default 150), and its exit status logged; a failing step
# does not stop the others. Steps run cheapest-to-lose last: the CUDA tests, training and eval first.
#
# On the device machine, ../shared does not travel: copy the two data folders into an ignored
# folder of the checkout first and carry it (22 MB):
#   echo /.gpu-data/ >>.git/info/exclude; mkdir -p .gpu-data
#   cp -r ../shared/data/davis16-train ../shared/data/davis16-eval .gpu-data/
# then run (carry [".gpu-data"], timeout_s 600):
#   ARCHIVE=$OUT/suite.tar.gz bash benchmarks/gpu_suite.sh /tmp/suite .gpu-data; tail -n 60 /tmp/suite/suite.log
#
# What it runs (all on GPU 0 unless said):
#   0. tests/test_model_cuda.py (the model, its optimised form and training steps on CUDA).
#   1. pdseg train on davis16 with bf16 and with fp16 (GradScaler), then --resume of the first; with
#      two or more GPUs, torchrun --nproc-per-node 2 pdseg train (DDP, SyncBatchNorm).
#   2. pdseg predict of examples/images with the bundled weights, plain and with --tta and
#      torch.compile; pdseg eval of davis16-eval (its scores must match the CPU's, weights/README.md).
#   3. pdseg benchmark, pdseg-b, bf16, 1024x1024, batch 1, 8 and 32: latency, images/s, peak memory
#      (#7: at most 10 ms per image at batch 8 on an H100); batch 8 again with torch.compile in
#      reduce-overhead mode (CUDA graphs); the same in fp32 at batch 8.
#   4. pdseg benchmark, pdseg-b, bf16 and fp32, full resolution 2048 and 4096 at batch 1.
#   5. benchmarks/latency.py --reference at 1024, bf16 and fp32: plain against optimised, the
#      GEMM floor of the GPU for the network, and a profile of both paths (#7's "floor"); and
#      benchmarks/isnet_compare.py: pdseg-b against IS-Net (the paper: 287 ms against 80.5 ms).
#
# Knobs for a quick check of the script itself on a CPU (the defaults are the real settings):
#   DEVICE=cpu COMPILE=default VARIANT=pdseg-tiny SIZE=64 BIG_SIZES="96" BATCHES="1 2" TRAIN_VARIANT=pdseg-tiny \
#   TRAIN_SIZE=64 TRAIN_BATCH=2 PRECISIONS=fp32 TRAIN_PRECISIONS=fp32 RUNS=1 \
#   bash benchmarks/gpu_suite.sh /tmp/suite
# PDSEG (default: "python3 -m pdseg_cli") runs pdseg from a source checkout without installing it.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [DATA_DIR]}
data=${2:-../shared/data}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PDSEG_PROGRESS=0

DEVICE=${DEVICE:-cuda}
VARIANT=${VARIANT:-pdseg-b}
SIZE=${SIZE:-1024}
BIG_SIZES=${BIG_SIZES:-2048 4096}
BATCHES=${BATCHES:-1 8 32}
PRECISIONS=${PRECISIONS:-bf16 fp32}
RUNS=${RUNS:-10}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
ARCHIVE=${ARCHIVE:-}
TRAIN_VARIANT=${TRAIN_VARIANT:-pdseg-t}
TRAIN_SIZE=${TRAIN_SIZE:-512}
TRAIN_BATCH=${TRAIN_BATCH:-8}
TRAIN_PRECISIONS=${TRAIN_PRECISIONS:-bf16 fp16}
COMPILE=${COMPILE:-reduce-overhead}
PDSEG=${PDSEG:-python3 -m pdseg_cli}
read -r -a pdseg <<<"$PDSEG"

mkdir -p "$out" || exit 2
log="$out/suite.log"
: >"$log"

# step NAME COMMAND...: run it, its output to OUT_DIR/NAME.txt (stdout) and NAME.err (stderr), its
# status and time to suite.log; after STEP_TIMEOUT seconds it gets SIGINT (pdseg stops cleanly and
# keeps what it finished), then SIGKILL 15 s later, so one hang cannot take the rest of the lease
step() {
    local name=$1 start=$SECONDS status
    shift
    echo "== $name: $*" | tee -a "$log"
    timeout --signal=INT --kill-after=15 "$STEP_TIMEOUT" "$@" >"$out/$name.txt" 2>"$out/$name.err"
    status=$?
    { [ "$status" = 124 ] || [ "$status" = 137 ]; } && echo "   stopped after ${STEP_TIMEOUT} s (STEP_TIMEOUT)" | tee -a "$log"
    echo "   exit $status, $((SECONDS - start)) s" | tee -a "$log"
    tail -n 3 "$out/$name.err" | sed 's/^/   ! /' >>"$log"
}

{
    date -u +"%Y-%m-%d %H:%M UTC"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    nproc
} >>"$log" 2>&1

if [ "$DEVICE" != cpu ]; then
    # PDSEG_RUN_SLOW: the compile tests (CUDA graphs with --tta) are marked slow
    step "cuda_tests" env PDSEG_RUN_SLOW=1 python3 -m pytest -q -p no:cacheprovider "$here/tests/test_model_cuda.py"
fi

if [ -d "$data/davis16-train" ] && [ -d "$data/davis16-eval" ]; then
    train=(train --variant "$TRAIN_VARIANT" --size "$TRAIN_SIZE" --batch "$TRAIN_BATCH" --device "$DEVICE"
        --train "$data/davis16-train" --val "$data/davis16-eval" --workers 4 --cache ram --seed 0)
    runs="$out/runs"
    for p in $TRAIN_PRECISIONS; do
        step "train_$p" "${pdseg[@]}" "${train[@]}" --precision "$p" --epochs 2 --out "$runs/$p"
    done
    p=${TRAIN_PRECISIONS%% *}
    step "train_${p}_resume" "${pdseg[@]}" "${train[@]}" --precision "$p" --epochs 3 --out "$runs/$p" --resume
    gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    if [ "$DEVICE" = cuda ] && [ "${gpus:-0}" -ge 2 ]; then
        step "train_ddp" torchrun --nproc-per-node 2 -m pdseg_cli "${train[@]}" --precision bf16 --epochs 2 \
            --out "$runs/ddp"
    else
        echo "== train_ddp: skipped (needs two CUDA GPUs; found ${gpus:-0})" | tee -a "$log"
    fi
    for r in $TRAIN_PRECISIONS ddp; do
        [ -f "$runs/$r/results.csv" ] && cp "$runs/$r/results.csv" "$out/train_$r.csv"
    done
    rm -rf "$runs"  # checkpoints are large; the CSVs and logs say what happened
    step "eval_davis16" "${pdseg[@]}" eval --split "$data/davis16-eval" --device "$DEVICE" \
        --json "$out/eval_davis16.json"
else
    echo "== training and eval steps skipped: no $data/davis16-train and davis16-eval" | tee -a "$log"
fi
step "predict_examples" "${pdseg[@]}" predict "$here/examples/images" --out "$out/masks" --device "$DEVICE"
step "predict_examples_tta_compiled" "${pdseg[@]}" predict "$here/examples/images" --out "$out/masks_tta" \
    --device "$DEVICE" --tta --compile "$COMPILE"

first=${PRECISIONS%% *}
for b in $BATCHES; do
    step "benchmark_${first}_b$b" "${pdseg[@]}" benchmark -v "$VARIANT" -s "$SIZE" -b "$b" -d "$DEVICE" \
        -p "$first" --runs "$RUNS" --json
done
# torch.compile with CUDA graphs (reduce-overhead) at batch 8: the warm-up compiles, then records
step "benchmark_${first}_b8_compiled" "${pdseg[@]}" benchmark -v "$VARIANT" -s "$SIZE" -b 8 -d "$DEVICE" \
    -p "$first" --runs "$RUNS" --warmup 3 --compile "$COMPILE" --json
for p in $PRECISIONS; do
    [ "$p" = "$first" ] && continue
    step "benchmark_${p}_b8" "${pdseg[@]}" benchmark -v "$VARIANT" -s "$SIZE" -b 8 -d "$DEVICE" -p "$p" \
        --runs "$RUNS" --json
done
for p in $PRECISIONS; do
    sizes=()
    for s in $BIG_SIZES; do sizes+=(-s "$s"); done
    step "benchmark_${p}_full" "${pdseg[@]}" benchmark -v "$VARIANT" "${sizes[@]}" -b 1 -d "$DEVICE" \
        -p "$p" --runs 5 --json
done
# shellcheck disable=SC2086  # PRECISIONS is a list
step "latency_reference" python3 "$here/benchmarks/latency.py" --reference --variants "$VARIANT" \
    --sizes "$SIZE" --device "$DEVICE" --precision $PRECISIONS --runs "$RUNS" --warmup 3 --profile 20

for p in $PRECISIONS; do
    step "isnet_compare_$p" python3 "$here/benchmarks/isnet_compare.py" --sizes "$SIZE" --device "$DEVICE" \
        --precision "$p" --runs "$RUNS" --warmup 3
done

echo "done; see $log" | tee -a "$log"
if [ -n "$ARCHIVE" ]; then
    tar -czf "$ARCHIVE" -C "$(dirname "$out")" "$(basename "$out")" && echo "packed into $ARCHIVE"
fi
