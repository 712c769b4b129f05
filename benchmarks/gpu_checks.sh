#!/usr/bin/env bash
# The GPU checks (documentation/performance.md), in priority order, each step bounded by its own timeout so that one slow or failing
# step cannot starve the rest. Writes every log and JSON to the folder RESULTS and packs it into the file ARCHIVE
# (.tgz) after each step (a run cut short still returns what it finished).
#
#   bash benchmarks/gpu_checks.sh RESULTS ARCHIVE [E2E_ROOT]
#
# E2E_ROOT (optional): a folder with nnUNet_raw/ and nnUNet_preprocessed/ of a planned 2d dataset 990 (the demo
# phantom); then the comparison runner trains and predicts baseline, fine-tune and pixel classifier on the GPU
# through nnUNetv2_train / nnUNetv2_predict, with nnU-Net's GPU defaults (torch.compile, AMP with a grad scaler).
# STEPS="train_step e2e_runner" runs only the steps named (default: all, in the order below); E2E_METHODS the methods
# of the end-to-end run (default: baseline finetune pixel).
set -u
RESULTS=$1
ARCHIVE=$2
E2E_ROOT=${3:-}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu.csv" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$RESULTS/gpu.csv" 2>&1

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start)) s" | tee -a "$RESULTS/summary.txt"
    tail -n 15 "$RESULTS/$name.log"
    tar czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}

step train_step 120 python3 benchmarks/bench_training_step.py --device cuda --repeats 20 --warmup 5 --no-recompute \
    --out "$RESULTS/training_step_cuda.json"
step profile 90 python3 benchmarks/profile_step.py --device cuda --batch 12 --out "$RESULTS/profile_step_cuda.json"
step train_step_bf16 120 python3 benchmarks/bench_training_step.py --device cuda --bf16 --repeats 20 --warmup 5 \
    --out "$RESULTS/training_step_cuda_bf16.json"
step train_step_memory 90 python3 benchmarks/bench_training_step.py --device cuda --memory --repeats 3 --warmup 2 \
    --no-recompute --out "$RESULTS/training_step_memory_cuda.json"
step pixel_classifier 90 python3 benchmarks/bench_pixel_classifier.py --device cuda --repeats 10 --warmup 3 \
    --out "$RESULTS/pixel_classifier_cuda.json"
step scaling 240 python3 benchmarks/bench_scaling.py --device cuda --repeats 10 --warmup 3 \
    --out "$RESULTS/scaling_cuda.json"
if [ -n "$E2E_ROOT" ]; then
    export nnUNet_raw=$E2E_ROOT/nnUNet_raw nnUNet_preprocessed=$E2E_ROOT/nnUNet_preprocessed \
        nnUNet_results=$E2E_ROOT/nnUNet_results nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir) \
        nnUNet_ddpm_demo_epochs=5 nnUNet_ddpm_demo_pretrain_epochs=5 nnUNet_ddpm_demo_iterations=20
    # preprocess here: the properties must come from the dataset's own reader
    step e2e_preprocess 60 nnUNetv2_preprocess -d 990 -c 2d -np 8
    step e2e_runner 200 nnUNetv2_ddpm_benchmark -d 990 -c 2d --methods ${E2E_METHODS:-baseline finetune pixel} --budgets 5 \
        --folds 0 --trainer-suffix _demo --device cuda --np 4 -o "$RESULTS/e2e_benchmark"
fi
step compile_bf16_check 150 python3 benchmarks/check_compile_bf16.py --device cuda \
    --out "$RESULTS/compile_bf16_cuda.json"
step train_step_compile 200 python3 benchmarks/bench_training_step.py --device cuda --bf16 --compile --skip-paper \
    --no-recompute --repeats 20 --warmup 5 --out "$RESULTS/training_step_cuda_bf16_compile.json"
