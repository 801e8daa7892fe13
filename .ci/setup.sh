#!/usr/bin/env bash
# Create the virtual environment and install dv4d with its pinned dependencies.
# Usage: bash .ci/setup.sh [VENV_DIR]
set -euo pipefail
venv="${1:-.venv}"

# open3d needs libusb-1.0 and libgomp at import time.
if ! ldconfig -p | grep -q 'libusb-1.0.so.0' || ! ldconfig -p | grep -q 'libgomp.so.1'; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgomp1 >/dev/null
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgomp1 >/dev/null
    else
        echo "dv4d setup: please install the system packages libusb-1.0-0 and libgomp1 (needed by open3d)" >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# torch + torchvision first: both are pinned, and pip takes them from a local wheel cache when one exists.
"$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/python" -m pip install -q -e ".[dev]"
echo "dv4d setup: $venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
