#!/usr/bin/env bash
# Builds diffmesh with CUDA + NCCL on a GPU host that has PyTorch's LibTorch, CUDA and NCCL but
# not the Debian -dev packages (see docs/GPU.md). Usage:
#   scripts/gpu-build.sh DEB_DIR [BUILD_DIR [TARGET...]]
# DEB_DIR holds the .deb files from ../shared/gpu-host/fetch-debs.sh (plus the extra packages
# docs/BENCHMARKS.md lists). TARGETs limit the build (default: everything). MP4 output needs
# FFmpeg's libraries, which such hosts lack: DIFFMESH_WITH_FFMPEG=ON turns it back on.
set -euo pipefail
debs=${1:?usage: scripts/gpu-build.sh DEB_DIR [BUILD_DIR]}
build=${2:-build-gpu}
shift $(( $# < 2 ? $# : 2 ))
env_sh=${DIFFMESH_GPU_ENV:-../shared/gpu-host/env.sh}
[ -f "$env_sh" ] || env_sh=scripts/gpu-env.sh
# shellcheck disable=SC1090
source "$env_sh" "$debs"
# The packages' .pc files name /usr: point them at the private prefix, so pkg-config finds the
# headers and libraries where they were unpacked.
find "$DIFFMESH_PREFIX/usr" -name '*.pc' -path '*pkgconfig*' -exec sed -i -E \
  "s#^(prefix|exec_prefix|libdir|includedir)=/usr#\1=$DIFFMESH_PREFIX/usr#" {} +
export PKG_CONFIG_PATH="$DIFFMESH_PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$DIFFMESH_PREFIX/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# The reference fixtures: ../shared/fixtures when present, else a copy carried as .fixtures.
if [ -z "${DIFFMESH_FIXTURES:-}" ] && [ ! -d ../shared/fixtures ] && [ -d .fixtures ]; then
  DIFFMESH_FIXTURES=$PWD/.fixtures
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DDIFFMESH_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DDIFFMESH_WITH_FFMPEG="${DIFFMESH_WITH_FFMPEG:-OFF}" \
  ${DIFFMESH_FIXTURES:+-DDIFFMESH_FIXTURES=$DIFFMESH_FIXTURES}
if [ $# -gt 0 ]; then
  cmake --build "$build" -j "$(nproc)" --target "$@"
else
  cmake --build "$build" -j "$(nproc)"
fi
