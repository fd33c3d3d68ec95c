#!/usr/bin/env bash
# Builds diffmesh with CUDA + NCCL on a GPU host that has PyTorch's LibTorch, CUDA and NCCL but
# not the Debian -dev packages (see docs/GPU.md). Usage:
#   scripts/gpu-build.sh DEB_DIR [BUILD_DIR]
# DEB_DIR holds the .deb files from ../shared/gpu-host/fetch-debs.sh (plus ninja-build).
set -euo pipefail
debs=${1:?usage: scripts/gpu-build.sh DEB_DIR [BUILD_DIR]}
build=${2:-build-gpu}
env_sh=${DIFFMESH_GPU_ENV:-../shared/gpu-host/env.sh}
[ -f "$env_sh" ] || env_sh=scripts/gpu-env.sh
# shellcheck disable=SC1090
source "$env_sh" "$debs"
# The reference fixtures: ../shared/fixtures when present, else a copy carried as .fixtures.
if [ -z "${DIFFMESH_FIXTURES:-}" ] && [ ! -d ../shared/fixtures ] && [ -d .fixtures ]; then
  DIFFMESH_FIXTURES=$PWD/.fixtures
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DDIFFMESH_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 ${DIFFMESH_FIXTURES:+-DDIFFMESH_FIXTURES=$DIFFMESH_FIXTURES}
cmake --build "$build" -j "$(nproc)"
