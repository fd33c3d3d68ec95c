#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang, ASan and UBSan in build-fuzz/, then runs
# each for SECONDS (default 15) on its committed seed corpus (fuzz/corpus/<harness>/) and the
# inputs of past findings (fuzz/regressions/<harness>/), with fuzz/json.dict for the harnesses
# that read JSON. Exits
# non-zero if any harness finds a crash, a sanitizer report, a timeout or a broken invariant;
# the input is kept in build-fuzz/artifacts/<harness>/. Usage:
#   scripts/fuzz.sh [SECONDS] [HARNESS...]
# Environment: DIFFMESH_FUZZ_BUILD (build folder, default build-fuzz), DIFFMESH_FUZZ_JOBS
# (parallel compile jobs, default nproc), DIFFMESH_FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
shift || true
build=${DIFFMESH_FUZZ_BUILD:-build-fuzz}
jobs=${DIFFMESH_FUZZ_JOBS:-$(nproc)}
all=(safetensors_header_fuzzer shard_index_fuzzer wire_tensor_fuzzer token_file_fuzzer
     pipeline_config_fuzzer config_json_fuzzer image_decode_fuzzer request_validator_fuzzer
     gemma_tokenizer_fuzzer bpe_tokenizer_fuzzer kv_frames_fuzzer)
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=("${all[@]}")

for tool in clang clang++; do
  command -v "$tool" >/dev/null || { echo "fuzz.sh: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
start=$(date +%s)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" -DDIFFMESH_FUZZ=ON -DDIFFMESH_WITH_TORCH=OFF \
  -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target "${harnesses[@]}"
built=$(date +%s)
echo "fuzz.sh: built in $((built - start)) s"

failed=()
for h in "${harnesses[@]}"; do
  seeds=fuzz/corpus/$h
  [ -d "$seeds" ] || { echo "fuzz.sh: no seed corpus $seeds" >&2; exit 1; }
  # New inputs go to a scratch folder; the committed seeds are only read.
  work=$build/corpus/$h
  artifacts=$build/artifacts/$h/
  mkdir -p "$work" "$artifacts"
  log=$build/$h.log
  flags=()
  case $h in
    safetensors_header_fuzzer|shard_index_fuzzer|pipeline_config_fuzzer|config_json_fuzzer|\
    bpe_tokenizer_fuzzer)
      flags+=(-dict=fuzz/json.dict) ;;
  esac
  inputs=("$work" "$seeds")
  [ -d "fuzz/regressions/$h" ] && inputs+=("fuzz/regressions/$h")
  echo "fuzz.sh: $h for ${seconds} s"
  # shellcheck disable=SC2086
  if "$build/fuzz/$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$artifacts" ${DIFFMESH_FUZZ_ARGS:-} \
       "${flags[@]}" "${inputs[@]}" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz.sh: $h ok, $execs executions"
  else
    echo "fuzz.sh: $h FAILED (input in $artifacts); the end of its log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$h")
  fi
done
echo "fuzz.sh: done in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
