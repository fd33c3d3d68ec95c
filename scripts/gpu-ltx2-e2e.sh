#!/usr/bin/env bash
# LTX-2.3 at its released sizes with random weights (built-in model ltx2.3-release-random), one
# GPU: one-stage text-to-video with audio, 768 x 512, 121 frames, 8 steps, guidance off (one
# transformer call a step), timed
#   embedded  bench_ltx2_e2e: the model layer in one process (BENCH_FLAGS, default --steps 8;
#             decoders in their serving precision, as the denoise service runs them)
#   mesh      diffmesh up --model ltx2.3-release-random --device cuda (the encoder process holds
#             Gemma 3 12B + the connectors, the denoise process the transformer and the decoders,
#             both on the one GPU), one warm-up generation, then RUNS timed `diffmesh generate
#             --server` calls: the client's wall time, the stage timings the CLI prints, and the
#             denoise steps as the client sees their progress events arrive
# The GPU build has no FFmpeg, so the mesh returns RAW frames and waveform (a .safetensors file),
# not an MP4.
# Usage: scripts/gpu-ltx2-e2e.sh BUILD_DIR [embedded|mesh]...  (default: both)
# Environment: PORT (base port, default 51151), RUNS (default 3), BENCH_FLAGS, START_TIMEOUT
# (seconds each service may take to load, default 900). For a dry run of the mesh part on the
# CPU: MODEL=ltx2-tiny DEVICE=cpu HEIGHT=64 WIDTH=64 FRAMES=9 STEPS=2.
# Prints FINAL lines (JSON) for docs/BENCHMARKS.md.
set -euo pipefail
build=${1:?build dir}
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(embedded mesh)
model=${MODEL:-ltx2.3-release-random}
device=${DEVICE:-cuda}
export HEIGHT=${HEIGHT:-512} WIDTH=${WIDTH:-768} FRAMES=${FRAMES:-121} STEPS=${STEPS:-8}
port=${PORT:-51151}
runs=${RUNS:-3}
BENCH_FLAGS=${BENCH_FLAGS:---steps 8}
work=$(mktemp -d /tmp/gpu-ltx2-e2e.XXXXXX)
up=""

cleanup() {
  if [ -n "$up" ] && kill -0 "$up" 2>/dev/null; then
    kill -TERM "$up"
    wait "$up" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

gpu_memory() {  # per-process and total GPU memory, as JSON
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits \
    2>/dev/null >"$work/apps.csv" || true
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader,nounits \
    2>/dev/null >"$work/gpu.csv" || true
  python3 - "$work/apps.csv" "$work/gpu.csv" <<'EOF'
import json, sys
apps = [dict(zip(("pid", "process", "used_mib"), [x.strip() for x in l.split(",")]))
        for l in open(sys.argv[1]) if l.strip()]
gpu = [dict(zip(("name", "used_mib", "total_mib"), [x.strip() for x in l.split(",")]))
       for l in open(sys.argv[2]) if l.strip()]
print(json.dumps({"processes": apps, "gpus": gpu}))
EOF
}

# One `diffmesh generate --server` call, timed by a wrapper that stamps each line the CLI prints
# on stderr (non-tty: "stage X started", "<stage> step k/n", "stage X finished in S s", "done in
# T s: <stage> S s ...").
generate() {  # LABEL
  python3 - "$1" "$build/services/cli/diffmesh" "$port" "$model" "$work/out.safetensors" <<'EOF'
import json, os, re, subprocess, sys, time
label, cli, port, model, out = sys.argv[1:6]
size = {k: int(os.environ[k]) for k in ("HEIGHT", "WIDTH", "FRAMES", "STEPS")}
cmd = [cli, "generate", "--server", f"127.0.0.1:{port}", "--model", model,
       "--prompt", "A red fox runs through fresh snow at sunrise, its breath visible, wind in the pines",
       "--height", str(size["HEIGHT"]), "--width", str(size["WIDTH"]),
       "--num-frames", str(size["FRAMES"]), "--steps", str(size["STEPS"]),
       # Guidance off: --guidance-scale 1 (no negative branch) and --stg-scale 0 (no perturbed
       # branch) for the video stream; the model's defaults keep the audio stream's cfg/stg and
       # both modality scales off, so each step is one transformer call, as in bench_ltx2_e2e.
       "--guidance-scale", "1", "--stg-scale", "0",
       "--seed", "42", "--output", out, "--output-format", "raw", "--timeout", "1800"]
t0 = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
lines = []
for line in p.stderr:
    lines.append((time.monotonic() - t0, line.rstrip("\n")))
stdout = p.stdout.read()
rc = p.wait()
wall = time.monotonic() - t0
res = {"part": "mesh", "model": model, "run": label, "rc": rc, "wall_s": round(wall, 3),
       "height": size["HEIGHT"], "width": size["WIDTH"], "frames": size["FRAMES"],
       "steps": size["STEPS"]}
step_t = []
for t, l in lines:
    m = re.match(r"stage (\S+) started$", l)
    if m and m.group(1) == "denoise":
        step_t = [t]
    m = re.match(r"denoise step (\d+)/(\d+)$", l)
    if m and step_t:
        step_t.append(t)
    m = re.match(r"done in ([0-9.]+) s:(.*)$", l)
    if m:
        res["server_total_s"] = float(m.group(1))
        res["stages_s"] = {k: float(v) for k, v in re.findall(r" (\S+) ([0-9.]+) s", m.group(2))}
    m = re.match(r"stage (\S+) finished in ([0-9.]+) s$", l)
    if m:
        res.setdefault("stage_events_s", {})[m.group(1)] = float(m.group(2))
    if l.startswith("accepted "):
        res["accepted"] = l
if len(step_t) > 1:
    # From the denoise stage's start (its embeddings' transfer and latent preparation included
    # in the first) to each step's progress event, as the client receives them.
    res["client_steps_s"] = [round(b - a, 3) for a, b in zip(step_t, step_t[1:])]
res["stdout"] = stdout.strip()
if rc != 0:
    res["stderr_tail"] = [l for _, l in lines[-10:]]
print("FINAL " + json.dumps(res), flush=True)
sys.exit(rc)
EOF
}

for part in "${parts[@]}"; do
  case $part in
    embedded)
      # shellcheck disable=SC2086
      "$build/bench/bench_ltx2_e2e" $BENCH_FLAGS | tee "$work/bench.log"
      grep '^FINAL ' "$work/bench.log" | tail -1 | sed 's/^FINAL //' |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("FINAL "+json.dumps({"part": "embedded", **d}))'
      ;;
    mesh)
      t0=$(date +%s%N)
      "$build/services/cli/diffmesh" up --model "$model" --device "$device" --base-port "$port" \
        --start-timeout "${START_TIMEOUT:-900}" >"$work/up.log" 2>&1 &
      up=$!
      # The orchestrator answers health checks before its stages have loaded: wait for `up` to
      # report every service SERVING (or to exit).
      until grep -q "mesh is up" "$work/up.log"; do
        if ! kill -0 "$up" 2>/dev/null; then
          tail -30 "$work/up.log"
          up=""
          exit 1
        fi
        sleep 1
      done
      echo "FINAL {\"part\": \"mesh-up\", \"start_s\": $(( ($(date +%s%N) - t0) / 1000000 ))e-3, \"gpu_memory\": $(gpu_memory)}"
      generate warmup || { tail -30 "$work/up.log"; exit 1; }
      for i in $(seq 1 "$runs"); do
        generate "$i" || { tail -30 "$work/up.log"; exit 1; }
      done
      echo "FINAL {\"part\": \"mesh-after\", \"gpu_memory\": $(gpu_memory)}"
      # The decode stage says when the video did not fit whole (decoded in tiles instead).
      echo "FINAL {\"part\": \"mesh-tiled-decodes\", \"count\": $(grep -c 'decoded it in tiles' "$work/up.log")}"
      kill -TERM "$up"
      wait "$up" || true
      up=""
      ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
