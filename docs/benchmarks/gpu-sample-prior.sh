#!/usr/bin/env bash
# gpu-sample-prior.sh: the sampling path and the prior's step on one GPU, in one device call (issues 15, 16).
#
# Set-up on the CPU machine, from the project's root:
#   ../shared/hooks/device/device-carry.sh                       # Ray, diffusers, ... -> .devcarry/
#   mkdir -p .devcarry/before && git archive 1381df6 raydino | tar -x -C .devcarry/before
# (1381df6: the last commit before the per-pixel noise maps, for the A/B of the generator pass).
# On the device (carry: [".devcarry"]):  bash docs/benchmarks/gpu-sample-prior.sh
# Steps, each tee'd to $OUT/<step>.log and writing its JSON record to $OUT/:
#   a_sample  raydino bench sample --preset ffhq256 --batches 1,64: flow prior (K steps, guided) +
#             one generator pass (with its noise maps), and DiT-XL/2 (250 steps + CFG) at batch 1 and 64
#   b_before  the same bench from commit 1381df6 (generator without noise maps), DiT cut to 2 steps:
#             only its generator figures are read, against a_sample's, in the same call
#   c_prior   raydino bench prior --phases step: one ffhq256 prior step at 256 codes
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
OUT="${OUT:-/tmp/gpu-sample-out}"
mkdir -p "$OUT"
root="$(pwd)"
bash .devcarry/install.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
cli="import sys; from raydino.cli import main; sys.argv[0] = 'raydino'; main()"  # the CLI, without installing the package
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
step() { local name=$1 cap=$2; shift 2; echo "### $name $(date -u +%T)"; timeout "$cap" python3 -c "$cli" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "Loading\|it/s\]" | tail -25; }
export PYTHONPATH="/tmp/site:$root"
step a_sample 240 bench sample --preset ffhq256 --batches 1,64 --out "$OUT/"
step c_prior 60 bench prior --phases step --preset ffhq256 --batch-size 256 --repeats 5 --out "$OUT/"
export PYTHONPATH="/tmp/site:$root/.devcarry/before"
(cd /tmp && step b_before 90 bench sample --preset ffhq256 --batches 1,64 --dit-steps 2 --out "$OUT/before-sample.json")
