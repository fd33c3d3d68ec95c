#!/usr/bin/env bash
# GLM-Image at its released sizes (random weights) on one GPU, from a snapshot on disk:
#   snapshot  writes the snapshot (bench/glm-image-release.patch.json, bf16, sharded like the
#             release) unless it exists
#   load      the disk's direct-I/O read speed, then the stages' loads (diffmesh-snapshot load
#             --cuda) with the files evicted from the page cache (cold) and again (warm)
#   e2e       bench_e2e embedded (every stage in one process), then the same requests through
#             the mesh (diffmesh up --model-dir, --device cuda), one after the other
# Usage: scripts/gpu-e2e.sh BUILD_DIR SNAPSHOT_DIR [snapshot|load|e2e]...  (default: all three)
# Prints FINAL lines (JSON) for docs/BENCHMARKS.md.
set -euo pipefail
build=${1:?build dir}
snap=${2:?snapshot dir}
shift 2
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(snapshot load e2e)
tool=$build/models/glm_image/tools/diffmesh-snapshot
bench=$build/bench/bench_e2e
E2E_FLAGS=${E2E_FLAGS:---requests 2 --warmup 1 --height 1024 --width 1024 --steps 50}

evict() {  # drop the snapshot's pages from the page cache (no root needed for clean pages)
  python3 - "$snap" <<'EOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}

for part in "${parts[@]}"; do
  case $part in
    snapshot)
      if [ ! -f "$snap/model_index.json" ]; then
        t0=$(date +%s%N)
        "$tool" write "$snap" --patch bench/glm-image-release.patch.json --dtype bf16
        echo "FINAL {\"write_ms\": $(( ($(date +%s%N) - t0) / 1000000 ))}"
      fi
      "$tool" check "$snap"
      ;;
    load)
      bytes=$(du -sb "$snap" | cut -f1)
      shard=$(ls -S "$snap"/*/*.safetensors | head -1)
      evict
      dd if="$shard" of=/dev/null bs=64M iflag=direct 2>&1 | tail -1
      evict
      echo "cold load ($bytes bytes):"
      "$tool" load "$snap" --cuda
      echo "warm load:"
      "$tool" load "$snap" --cuda
      ;;
    e2e)
      # shellcheck disable=SC2086
      "$bench" --model-dir "$snap" --device cuda $E2E_FLAGS
      port=51051
      "$build/services/cli/diffmesh" up --model-dir "$snap" --device cuda --base-port $port \
        >/tmp/gpu-e2e-up.log 2>&1 &
      up=$!
      # The orchestrator answers health checks before its stages have loaded: wait for `up`
      # to report every service SERVING (or to exit).
      until grep -q "mesh is up" /tmp/gpu-e2e-up.log; do
        kill -0 $up 2>/dev/null || { tail -20 /tmp/gpu-e2e-up.log; exit 1; }
        sleep 1
      done
      # shellcheck disable=SC2086
      "$bench" --server 127.0.0.1:$port $E2E_FLAGS || { tail -20 /tmp/gpu-e2e-up.log; }
      kill -TERM $up
      wait $up || true
      ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
