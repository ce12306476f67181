#!/usr/bin/env bash
# Creates .venv and installs mulde with its test tools. Safe to run again.
#
# PyTorch is installed first at a pinned release so that pip takes the CPU
# wheel where one is available locally; pyproject.toml itself only asks for
# a normal version range.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet "torch>=2.2,<3"
fi
python -m pip install --quiet -e ".[dev]"
