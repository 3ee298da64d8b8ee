#!/bin/sh
# Run an aarch64 program on an x86-64 Linux machine under qemu-user (Debian: qemu-user,
# g++-aarch64-linux-gnu for the ARM glibc in /usr/aarch64-linux-gnu).
#
# ONNX Runtime's CPU detection reads /proc/cpuinfo, which under qemu-user still describes the x86
# host, and crashes on it; so, where this shell may (root, or user namespaces), the program runs in
# a private mount namespace with tools/arm64_cpuinfo (a 2-core Cortex-A72) bind-mounted over it.
set -e
here=$(cd "$(dirname "$0")" && pwd)
sysroot=${EF_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 not found: apt-get install qemu-user" >&2; exit 2; }
if grep -q "^CPU implementer" /proc/cpuinfo 2>/dev/null; then
  exec qemu-aarch64 -L "$sysroot" "$@"
fi
if [ "$(id -u)" = 0 ]; then
  exec unshare --mount sh -c 's=$1; shift; mount --bind "$0" /proc/cpuinfo && exec qemu-aarch64 -L "$s" "$@"' \
    "$here/arm64_cpuinfo" "$sysroot" "$@"
fi
if unshare --user --map-root-user --mount true 2>/dev/null; then
  exec unshare --user --map-root-user --mount sh -c \
    's=$1; shift; mount --bind "$0" /proc/cpuinfo && exec qemu-aarch64 -L "$s" "$@"' "$here/arm64_cpuinfo" "$sysroot" "$@"
fi
echo "warning: cannot bind-mount an ARM /proc/cpuinfo (not root, no user namespaces); ONNX Runtime may crash" >&2
exec qemu-aarch64 -L "$sysroot" "$@"
