#!/bin/sh
# Prints the packages that hold the shared libraries the given binaries link directly (their
# NEEDED entries, located through ldd), one per line, so a runtime image installs exactly what
# the build linked; apt brings their own dependencies. Libraries no package owns (e.g. PyTorch's
# LibTorch in a CUDA build) are named on stderr: the image copies those itself.
# Usage: deploy/docker/runtime-packages.sh BINARY...   (needs objdump: binutils)
set -eu
for bin in "$@"; do
  needed=$(objdump -p "$bin" | awk '$1 == "NEEDED" {print $2}')
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name lib; do
    echo "$needed" | grep -qxF "$name" || continue
    real=$(readlink -f "$lib")
    pkg=
    # usrmerge: a file may be registered under /lib or /usr/lib.
    for path in "$lib" "$real" "/usr$lib" "${lib#/usr}" "/usr$real" "${real#/usr}"; do
      pkg=$(dpkg -S "$path" 2>/dev/null | head -n1 | sed 's/[:,].*//') || true
      [ -n "$pkg" ] && break
    done
    if [ -n "$pkg" ]; then echo "$pkg"; else echo "not from a package: $lib" >&2; fi
  done
done | sort -u
