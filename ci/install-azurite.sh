#!/usr/bin/env bash
# Install Azurite (Microsoft's Azure Storage emulator, npm package `azurite` 3.x) so
# tests/test_remote_azure.py runs az:// and abfs:// against a loopback blob server instead of
# skipping. Needs node and npm: installed from Debian when missing. Azurite goes into a fixed
# folder, $GEOSEG_AZURITE_DIR (default ~/.cache/geoseg/azurite), where tests/azurite.py looks
# (then on PATH). Idempotent: does nothing when azurite-blob is already there.
set -euo pipefail
dir="${GEOSEG_AZURITE_DIR:-$HOME/.cache/geoseg/azurite}"
bin="$dir/node_modules/.bin/azurite-blob"
if [ -x "$bin" ]; then
    echo "install-azurite: $bin already installed, nothing to do"
    exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends nodejs npm
fi
mkdir -p "$dir"
# --prefix: a private node_modules, no global install, no package.json of ours to keep
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "azurite@3"
"$bin" --version >/dev/null
echo "install-azurite: $bin ($("$bin" --version))"
