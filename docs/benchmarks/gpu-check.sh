#!/usr/bin/env bash
# gpu-check.sh (issue 17): raydino's GPU figures in one device call, about 8 minutes.
#
# Adapted from the shared hooks/device/gpu-check.sh: same install, env check, Ray clean-up and
# per-step time limits; the steps and what comes back are issue 17's. Set-up here, from the
# repository the device tool sends (ROOT) with the project checkout PROJECT:
#   shared/hooks/device/device-carry.sh --project PROJECT --worktree ROOT
#   cp PROJECT/docs/benchmarks/gpu-check.sh ROOT/.devcarry/
# then on the device machine (carry: [".devcarry"]):  bash .devcarry/gpu-check.sh
# Steps (each tee'd to $OUT/steps.log; a failed or timed-out step does not stop the next):
#   a_env        nvidia-smi, versions, imports, ray.init() must see the GPU
#   b_pyramids   bench pyramids --arch vitb14 --batch-size 256, phases ceiling, encoder, write, ray (1 actor)
#   c_train      bench train --phases device: 256 px, batch 32 and 128, eager, bf16 (MFU)
#   g_train_ray  bench train --phases ray: 1 GPU worker, NCCL, the input-pipeline ratio
#   h_ffhq256    a shortened ffhq256 run (16 -> 256 px) through `raydino train`, then a resume
#   e_pyramids_2actors  ceiling + ray with 2 encoder actors at 0.5 GPU each
#   f_train_compile     batch 128, generator and DINOv2 compiled
#   d_train_cl   batch 128 with the generator channels-last
# (in this order: what the issue's "Done when" needs first; the budget skips what does not fit)
# Seen on an H200 (2026-11-27, one call, budget 490 s): install + a_env 39 s; b_pyramids over 150 s
# (ceiling, encoder and write took ~100 s with their process starts, the ray phase's quarter run 19 s,
# of which ~10 s waiting for the encoder actor); c_train 28 s; g_train_ray over 90 s (81 s with
# --rows 256 --epochs 1); h_ffhq256 over 150 s (pyramid 20 s, then Ray Train start and five stages).
# The caps below are sized from that; the whole list needs about 15 minutes, more than one session's
# device time: run a subset (GPU_CHECK_STEPS) per session.
# Each bench writes its JSON record to $OUT/records/ (at most 6 come back with steps.log and
# summary.txt: the device returns 8 files).
# Environment: OUT, PYTHON, GPU_CHECK_STEPS (comma-separated step names, e.g. b_pyramids,e_pyramids_2actors;
# default all; a_env always runs), GPU_CHECK_BUDGET_S (default 480; 2400 with GPU_CHECK_SMALL=1),
# GPU_CHECK_COUNT (faces for the pyramid benches, default 8192), GPU_CHECK_SMALL=1 (CPU
# rehearsal: arch tiny, small counts, --device cpu, no GPU asserts), DEVCARRY_SITE (/tmp/site).
set -uo pipefail
export PYTHONUNBUFFERED=1
# the device has no network: nothing may wait on the Hugging Face hub or on Ray's usage report
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/gpu-check-out}"
py="${PYTHON:-python3}"
small="${GPU_CHECK_SMALL:-0}"
budget="${GPU_CHECK_BUDGET_S:-$([[ $small = 1 ]] && echo 2400 || echo 480)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-work.XXXXXX")"
site="${DEVCARRY_SITE:-/tmp/site}"
# Ray's sessions and logs: ours alone, and short (Ray's unix sockets live under it: 107 bytes at most)
own_raytmp=0
[[ -n "${RAY_TMPDIR:-}" ]] || { RAY_TMPDIR="$(mktemp -d /tmp/rgc.XXXX)"; own_raytmp=1; }
export RAY_TMPDIR
mkdir -p "$OUT" "$RAY_TMPDIR"
t_start=$SECONDS
status=()
last_rc=0

rec="$OUT/records"
if [[ $small = 1 ]]; then
  PYR=(--arch tiny --count 128 --batch-size 16 --device cpu)
  TRAIN=(--arch tiny --resolution 32 --steps 2 --device cpu)
  B1=4 B2=8 FACES=64 FFHQ_STAGES="[{resolution: 16, images: 32, batch_size: 8}, {resolution: 32, images: 32, batch_size: 8}, {resolution: 64, images: 16, batch_size: 4}, {resolution: 128, images: 16, batch_size: 4}, {resolution: 256, images: 8, batch_size: 2}]"
  FFHQ_RESUME_STAGES="${FFHQ_STAGES%]}, {resolution: 256, images: 8, batch_size: 2}]" FFHQ_ARCH=tiny FFHQ_GPU="train.use_gpu=false pyramids.num_gpus=0"
else
  count="${GPU_CHECK_COUNT:-8192}"
  PYR=(--arch vitb14 --count "$count" --batch-size 256)
  TRAIN=(--arch vitb14 --resolution 256 --steps 10)
  B1=32 B2=128 FACES=512 FFHQ_STAGES="[{resolution: 16, images: 256, batch_size: 64}, {resolution: 32, images: 256, batch_size: 64}, {resolution: 64, images: 256, batch_size: 64}, {resolution: 128, images: 256, batch_size: 64}, {resolution: 256, images: 256, batch_size: 32}]"
  FFHQ_RESUME_STAGES="${FFHQ_STAGES%]}, {resolution: 256, images: 256, batch_size: 32}]" FFHQ_ARCH=vitb14 FFHQ_GPU=""
fi

# Kill, by pid, what a timed-out step left of its Ray node: processes whose command line names our
# RAY_TMPDIR (raylet, gcs_server, workers, dashboard); nothing else.
reap() {
  local p cmd pids=()
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} = "$$" || ${p#/proc/} = "$BASHPID" ]] && continue
    cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
    [[ $cmd == *"$RAY_TMPDIR"* ]] && pids+=("${p#/proc/}")
  done
  if ((${#pids[@]})); then
    echo "gpu-check: killing ${#pids[@]} leftover Ray processes: ${pids[*]}"
    kill -9 "${pids[@]}" 2>/dev/null
    sleep 2
  fi
}

# run_step NAME CAP_SECONDS COMMAND...  (skipped unless GPU_CHECK_STEPS, when set, names it)
run_step() {
  local name="$1" cap="$2"
  shift 2
  if [[ -n "${GPU_CHECK_STEPS:-}" && ",$GPU_CHECK_STEPS,a_env," != *",$name,"* ]]; then
    status+=("$name: not selected")
    last_rc=0
    return
  fi
  local left=$((budget - (SECONDS - t_start) - 10))
  local limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    echo "### $name: skipped, ${left}s of the ${budget}s budget left" | tee -a "$OUT/steps.log"
    status+=("$name: skipped (budget)")
    last_rc=125
    return
  fi
  local t0=$SECONDS
  {
    echo "### $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@"
  } 2>&1 | tee -a "$OUT/steps.log"
  local rc=${PIPESTATUS[0]}
  reap 2>&1 | tee -a "$OUT/steps.log"
  local how="ok"
  ((rc == 0)) || how="FAILED rc=$rc"
  ((rc == 124 || rc == 137)) && how="TIMED OUT after ${limit}s"
  echo "### $name: $how in $((SECONDS - t0))s" | tee -a "$OUT/steps.log"
  status+=("$name: $how in $((SECONDS - t0))s")
  last_rc=$rc
}

# ---- helpers written to $work ---------------------------------------------------------------
cat >"$work/env_check.py" <<'EOF'
"""Versions, the imports the benches need, and a Ray node that sees the GPU."""
import importlib, importlib.metadata as md, os, platform, sys, time
from pathlib import Path

small = os.environ.get("GPU_CHECK_SMALL") == "1"
print("python", sys.version.split()[0], sys.executable, platform.machine())
for dist in ["torch", "torchvision", "transformers", "huggingface-hub", "safetensors", "timm", "numpy", "pandas",
             "pyarrow", "pillow", "protobuf", "grpcio", "aiohttp", "typing-extensions", "packaging", "ray",
             "pydantic", "pydantic-core", "jsonschema", "opencensus", "opentelemetry-sdk", "tensorboardX",
             "diffusers", "open-clip-torch", "ftfy"]:
    try:
        d = md.distribution(dist)
        print(f"  {dist:<20} {d.version:<14} {d.locate_file('')}")
    except md.PackageNotFoundError:
        print(f"  {dist:<20} MISSING")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
bad = []
for mod in ["ray", "ray.data", "ray.train", "ray.train.torch", "ray.tune", "ray.dashboard.optional_deps",
            "ray.util.state", "tensorboardX", "jsonschema", "pydantic", "open_clip", "raydino.cli",
            "raydino.pipeline", "raydino.pyramids.extract", "raydino.bench.pyramids",
            "raydino.bench.train", "raydino.train.trainer", "raydino.sweep.tune"]:
    try:
        importlib.import_module(mod)
    except Exception as exc:
        bad.append(mod)
        print(f"IMPORT FAILED {mod}: {type(exc).__name__}: {exc}")
print("imports:", "all ok" if not bad else f"FAILED {bad}")

import ray
t = time.perf_counter()
ray.init()
print(f"ray.init {time.perf_counter() - t:.1f}s; cluster_resources {ray.cluster_resources()}")
gpus = ray.cluster_resources().get("GPU", 0)

@ray.remote(num_gpus=0 if small else 1)
def where():
    import torch
    return (os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available(),
            torch.cuda.get_device_name() if torch.cuda.is_available() else None)

print("a Ray task asking for", 0 if small else 1, "GPU ran with (CUDA_VISIBLE_DEVICES, cuda, name):",
      ray.get(where.remote(), timeout=120))
session = Path(ray._private.worker._global_node.get_session_dir_path())
time.sleep(3)
ray.shutdown()
hits = []
for f in sorted((session / "logs").glob("*")):
    if f.is_file():
        for line in f.read_text(errors="replace").splitlines():
            if any(k in line for k in ("ModuleNotFoundError", "ImportError", "No module named")):
                hits.append(f"{f.name}: {line.strip()[:300]}")
print(f"Ray logs in {session}: {len(hits)} import-error lines" + (" (WARNING: a Ray process lacks a module)" if hits else ""),
      *hits[:20], sep="\n  ")
if bad or (gpus < 1 and not small):  # what the later steps need; log lines above are a warning only
    sys.exit(f"env check failed: imports {bad}, GPUs seen by Ray {gpus}")
print("env check: ok")
EOF

cat >"$work/bench_wrap.py" <<'EOF'
"""`python3 bench_wrap.py [--gpus-per-actor F] ARGS...` runs `python3 -m raydino.cli ARGS...` with two changes.

1. The synthetic faces are written by every core, not one after another: the same files
   (raydino.data.synth_faces.face is deterministic in (seed, index); same names, same
   metadata.parquet rows), in a few seconds instead of ~100 faces/s. Setup only: the bench
   times none of it.
2. With --gpus-per-actor F (bench pyramids), the PyramidConfig the bench builds gets
   num_gpus=F instead of 1 (so `--actors 2 --gpus-per-actor 0.5` puts two encoder actors on one
   GPU, as pyramids.num_gpus=0.5 does in a real run; CPU runs keep 0), and the ray phase runs in
   this process, where the change applies (the other phases still get their fresh process).
Each phase's figures are also printed as soon as it ends ("bench_wrap: phase NAME: {json}"), so
a step cut short by its time limit still reports the phases it finished.
"""
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path


def _one_face(job):
    from raydino.data.synth_faces import face

    out, seed, i, size = job
    img, attrs = face(seed, i, size)
    name = f"face_{i:06d}.png"
    img.save(Path(out) / name, compress_level=1)
    return {"file": name, **asdict(attrs), "caption": attrs.caption()}


def write_faces_parallel(out, count, seed=0, size=256):
    """raydino.data.synth_faces.write_faces, on all cores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, size) for i in range(count)]
    workers = min(len(os.sched_getaffinity(0)), max(1, count // 64))
    if workers < 2:
        rows = [_one_face(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(_one_face, jobs, chunksize=max(1, count // (4 * workers))))
    pq.write_table(pa.Table.from_pylist(rows), out / "metadata.parquet")
    return out


def main() -> int:
    import raydino.bench.pyramids as bench
    import raydino.cli
    import raydino.config as config
    import raydino.data.synth_faces as synth_faces

    argv = sys.argv[1:]
    gpus_per_actor = None
    if argv[:1] == ["--gpus-per-actor"]:
        gpus_per_actor, argv = float(argv[1]), argv[2:]
    synth_faces.write_faces = write_faces_parallel
    isolated = bench._isolated
    in_process = set()

    def phase(fn, *args):
        result = fn(*args) if fn in in_process else isolated(fn, *args)
        name = "ray" if fn is bench.ray_pipeline else fn.__name__
        print(f"bench_wrap: phase {name}: {json.dumps(result)}", flush=True)
        return result

    bench._isolated = phase
    if gpus_per_actor is not None:
        original = config.PyramidConfig

        def shared_gpu(*args, **kwargs):
            cfg = original(*args, **kwargs)
            if cfg.num_gpus > 0:
                cfg.num_gpus = gpus_per_actor
            print(f"bench_wrap: PyramidConfig actors={cfg.actors} num_gpus={cfg.num_gpus}", flush=True)
            return cfg

        config.PyramidConfig = shared_gpu
        in_process.add(bench.ray_pipeline)
    rc = raydino.cli.main(argv)
    if gpus_per_actor is not None and "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
        if out.exists():
            results = json.loads(out.read_text())
            results["config"]["gpus_per_actor"] = gpus_per_actor if results["config"]["device"] == "cuda" else 0
            out.write_text(json.dumps(results, indent=2))
    return rc


if __name__ == "__main__":  # spawned processes (the faces, the bench's phases) import this file
    sys.exit(main())
EOF

cat >"$work/summary.py" <<'EOF'
"""The key figures of the records in $OUT/records, as text."""
import json, sys
from pathlib import Path

rec, statuses = Path(sys.argv[1]), sys.argv[2:]
lines = ["# gpu-check (issue 17) summary", *statuses, ""]
for f in sorted(rec.glob("*.json"), key=lambda f: f.stat().st_mtime):
    r = json.loads(f.read_text())
    m = r.get("machine", {})
    lines.append(f"## {f.name}: {r.get('command')}")
    lines.append(f"machine: {m.get('gpu') or m.get('cpu')}, {m.get('cores')} cores, load {m.get('load_average', 0):.1f}; {r.get('versions')}")
    if r.get("bench") == "pyramids":
        ph = r["phases"]
        for k, v in ph.items():
            extra = ""
            if k == "ray":
                extra = f" (end to end {v['end_to_end_images_per_s']:.1f}; full {v['seconds']:.1f}s, quarter {v['quarter_seconds']:.1f}s)"
                if v["seconds"] <= v["quarter_seconds"]:
                    extra += " STEADY RATE INVALID"
            lines.append(f"  {k:<8} {v['images_per_s']:10.1f} images/s{extra}")
            for op, rate in v.get("operator_images_per_s", {}).items():
                lines.append(f"    {op:<40} {rate:10.1f} images/s over its active span")
        for top, base in (("ray", "ceiling"), ("encoder", "ceiling")):
            if top in ph and base in ph:
                lines.append(f"  {top}/{base}: {ph[top]['images_per_s'] / ph[base]['images_per_s']:.3f}")
    for row in r.get("device", []):
        lines.append(f"  device {row['resolution']} px batch {row['batch']} compile {row['compile']} cl {row['channels_last']}: "
                     f"{row['ms_per_step']:.1f} ms/step, {row['images_per_s']:.1f} images/s, {row['gflop_per_step']:.0f} GFLOP/step, "
                     f"{row['tflop_per_s']:.1f} TFLOP/s, MFU {row.get('mfu', float('nan')):.3f}, "
                     f"of measured matmul {row.get('fraction_of_measured_matmul', float('nan')):.3f}, peak {row.get('peak_gpu_mib', 0) / 1024:.1f} GiB")
    for row in r.get("ray", []):
        lines.append(f"  ray {json.dumps(row)}")
    if r.get("bench") == "ffhq256-run":
        lines.append("  " + json.dumps({k: v for k, v in r.items() if k not in ("machine", "versions")}))
    lines.append("")
print("\n".join(lines))
EOF

cat >"$work/ffhq.sh" <<'EOF'
# Item 3: a shortened ffhq256 run through `raydino train` (one worker; NCCL on a GPU), from a pyramid
# made here by `raydino pyramids`, then a resume with one more 256 px stage appended (a finished
# schedule has nothing left to resume).
set -uo pipefail
d="$(mktemp -d /tmp/ffhq.XXXX)"
# options first, then the key=value overrides (argparse takes the overrides as one trailing list)
opts=(--preset ffhq256 --address local)
overrides=("pyramids.dino=$d/dino" 'pyramids.clip=""' train.num_workers=1 train.val_count=16
           train.checkpoint_every=4 train.sample_every=4 train.log_every=2 $FFHQ_GPU)
"$py" -c "import sys, pathlib; from raydino.bench.pyramids import save_random_dino; save_random_dino(sys.argv[1], pathlib.Path(sys.argv[2]))" \
  "$FFHQ_ARCH" "$d/dino" || exit 1
"$py" -m raydino.cli synth-faces --out "$d/faces" --count "$FACES" --size 256 || exit 1
t0=$SECONDS
"$py" -m raydino.cli pyramids "${opts[@]}" --images "$d/faces" --out "$d/pyr" --batch-size 256 --actors 1 "${overrides[@]}"; rc_pyr=$?
t1=$SECONDS
"$py" -m raydino.cli train "${opts[@]}" --pyramids "$d/pyr" --out "$d/run" "${overrides[@]}" "train.stages=$FFHQ_STAGES" 2>&1 | tee "$d/train.log"
rc_train=${PIPESTATUS[0]}
t2=$SECONDS
"$py" -m raydino.cli train --resume --address local --pyramids "$d/pyr" --out "$d/run" "train.stages=$FFHQ_RESUME_STAGES" 2>&1 | tee "$d/resume.log"
rc_resume=${PIPESTATUS[0]}
t3=$SECONDS
"$py" - "$d" "$rec" "$rc_pyr" "$rc_train" "$rc_resume" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" <<'PY'
import json, re, statistics, sys
from pathlib import Path
from raydino.bench.record import header, save
d, rec = Path(sys.argv[1]), sys.argv[2]
rc_pyr, rc_train, rc_resume, s_pyr, s_train, s_resume = map(int, sys.argv[3:9])
def rates(log):
    per = {}
    for m in re.finditer(r"\[train (\d+)px\] step (\d+)/(\d+) images (\d+) .* ([\d.]+) img/s", log.read_text(errors="replace") if log.exists() else ""):
        if (int(m[2]), float(m[5])) not in per.get(int(m[1]), []):  # Ray echoes some worker lines twice
            per.setdefault(int(m[1]), []).append((int(m[2]), float(m[5])))
    return {res: {"log_lines": len(v), "median_images_per_s_after_first": statistics.median([r for _, r in v[1:]]) if len(v) > 1 else None,
                  "steps_logged": [s for s, _ in v]} for res, v in per.items()}
run = d / "run"
r = {**header("ffhq256-run"),
     "command": "gpu-check.sh h_ffhq256: raydino synth-faces, raydino pyramids, raydino train, raydino train --resume "
                "(--preset ffhq256, random-weight DINOv2, stages and overrides in the script)",
     "rc": {"pyramids": rc_pyr, "train": rc_train, "resume": rc_resume},
     "seconds": {"pyramids": s_pyr, "train": s_train, "resume": s_resume},
     "pyramid": {k: v for k, v in json.loads((d / "pyr" / "manifest.json").read_text()).items()
                 if k in ("rows", "images_per_s", "seconds", "levels", "dim")} if (d / "pyr" / "manifest.json").exists() else None,
     "train_stages": rates(d / "train.log"), "resume_stages": rates(d / "resume.log"),
     "files": {"generator.safetensors": (run / "generator.safetensors").exists(),
               "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("step_*")),
               "grids": sorted(p.name for p in (run / "grids").glob("*.png")) if (run / "grids").exists() else [],
               "tensorboard_event_files": len(list((run / "tb").glob("events.*"))) if (run / "tb").exists() else 0,
               "metrics.json": json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else None},
     "resume_log_head": [l for l in (d / "resume.log").read_text(errors="replace").splitlines() if "[train" in l][:3] if (d / "resume.log").exists() else []}
save(r, rec + "/")
print(json.dumps({k: r[k] for k in ("rc", "seconds", "train_stages", "files")}, indent=1))
PY
rm -rf "$d"
((rc_pyr == 0 && rc_train == 0 && rc_resume == 0))
EOF
export py rec FACES FFHQ_STAGES FFHQ_RESUME_STAGES FFHQ_ARCH FFHQ_GPU

# ---- steps ----------------------------------------------------------------------------------
{
  echo "### install (.devcarry/install.sh) $(date -u +%FT%TZ), small=$small, budget ${budget}s"
  bash "$here/install.sh"
} 2>&1 | tee "$OUT/steps.log"
project_dir="$here/project"; [[ -d $project_dir ]] || project_dir="$(cd "$here/.." && pwd)"
export PYTHONPATH="$site:$project_dir${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_SMALL="$small"
mkdir -p "$rec"
echo "PYTHONPATH=$PYTHONPATH RAY_TMPDIR=$RAY_TMPDIR" | tee -a "$OUT/steps.log"
cd "$project_dir"  # the records' git field: the carried checkout has no .git, so it reads null

if [[ $small = 1 ]]; then
  run_step a_env 300 bash -c "uname -a; nproc; $py $work/env_check.py"
else
  run_step a_env 90 bash -c "nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv;
    uname -a; nproc; free -g | head -2; df -h /tmp /dev/shm; $py $work/env_check.py"
fi
ray_ok=$((last_rc == 0))
run_step b_pyramids 240 "$py" "$work/bench_wrap.py" bench pyramids \
  --phases "ceiling,encoder,write$( ((ray_ok)) && echo ,ray)" "${PYR[@]}" --out "$rec/"
run_step c_train 70 "$py" -m raydino.cli bench train --phases device "${TRAIN[@]}" --batch-size "$B1,$B2" --out "$rec/"
if ((ray_ok)); then
  run_step g_train_ray 120 "$py" -m raydino.cli bench train --phases ray --arch "$FFHQ_ARCH" --resolution "$( [[ $small = 1 ]] && echo 32 || echo 256)" \
    --batch-size "$B1" --rows "$( [[ $small = 1 ]] && echo 32 || echo 512)" --epochs 2 --out "$rec/"
  run_step h_ffhq256 300 bash "$work/ffhq.sh"
  run_step e_pyramids_2actors 150 "$py" "$work/bench_wrap.py" --gpus-per-actor 0.5 bench pyramids --phases ceiling,ray \
    --actors 2 "${PYR[@]}" --out "$rec/pyramids-2actors_$(date -u +%Y%m%dT%H%M%S).json"
fi
if [[ $small != 1 ]]; then  # compiling on the CPU machine takes minutes: checked apart there
  run_step f_train_compile 120 "$py" -m raydino.cli bench train --phases device "${TRAIN[@]}" --batch-size "$B2" --compile all --out "$rec/"
fi
run_step d_train_cl 45 "$py" -m raydino.cli bench train --phases device "${TRAIN[@]}" --batch-size "$B2" --channels-last --out "$rec/"

# ---- summary ------------------------------------------------------------------------------
status+=("total: $((SECONDS - t_start))s of the ${budget}s budget")
"$py" "$work/summary.py" "$rec" "${status[@]}" >"$OUT/summary.txt" 2>&1 || printf '%s\n' "${status[@]}" >>"$OUT/summary.txt"
{
  echo "### Ray log excerpts"
  grep -rh -E 'Traceback|[A-Za-z]+(Error|Exception): |No module named|^\[[0-9 :,-]+ [EF] ' "$RAY_TMPDIR"/ray/session_*/logs 2>/dev/null |
    cut -c1-400 | sort | uniq -c | sort -rn | head -100
} >>"$OUT/steps.log"
cat "$OUT/summary.txt"
ls -la "$OUT" "$rec"
rm -rf "$work"
((own_raytmp)) && rm -rf "$RAY_TMPDIR"
