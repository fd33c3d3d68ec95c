#!/usr/bin/env bash
# Installs the Debian 12 packages diffmesh builds and tests with. As root it installs what is
# missing; otherwise it prints the one apt-get line needed and fails.
set -euo pipefail
PACKAGES=(
  cmake make g++ pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libtorch-dev libgloo-dev
  prometheus-cpp-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libspng-dev zlib1g-dev libicu-dev
  python3 python3-grpcio python3-protobuf prometheus
  golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev python3-kubernetes python3-yaml
  libjpeg62-turbo-dev libwebp-dev
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev libswresample-dev python3-av ffmpeg
  libcpp-httplib-dev
  clang libclang-rt-14-dev
  chromium
)
# node/npm for the HTTP front door's client tests (tests/http): Debian's, unless a node is
# already there (e.g. NodeSource's, which its npm comes with and Debian's npm would conflict with).
if ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# The npm packages tests/http pins (package-lock.json): the official openai client and
# playwright-core (which drives the Debian chromium above; it downloads no browser).
install_npm_packages() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/http"
  if [ ! -d "$dir/node_modules/openai" ] || [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
}
if [ ${#missing[@]} -eq 0 ]; then
  install_npm_packages
  exit 0
fi
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "diffmesh needs these Debian packages; run as root:" >&2
  echo "  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
sh -c "$cmd"
install_npm_packages
