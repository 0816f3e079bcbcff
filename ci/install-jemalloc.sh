#!/usr/bin/env bash
# Install jemalloc (Debian's libjemalloc2) so geoseg's model processes run under it
# (geoseg/allocator.py) and tests/test_allocator.py runs instead of skipping.
# Idempotent: does nothing when the library is already there.
set -euo pipefail
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
if [ -e "/usr/lib/$arch/libjemalloc.so.2" ]; then
    echo "install-jemalloc: /usr/lib/$arch/libjemalloc.so.2 already installed, nothing to do"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends libjemalloc2
ls -l "/usr/lib/$arch/libjemalloc.so.2"
