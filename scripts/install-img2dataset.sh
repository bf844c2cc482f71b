#!/usr/bin/env bash
# img2dataset in a virtual environment of its own (.venv-img2dataset): the tests run the real producer of
# webdataset/parquet shards against a local http.server. It pins pandas < 3, which the project's venv does not,
# so it cannot share that venv; the tests only call its command line.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-img2dataset
if [ -x "$VENV/bin/img2dataset" ]; then exit 0; fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "img2dataset==1.47.0"
