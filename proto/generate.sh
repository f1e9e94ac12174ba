#!/usr/bin/env bash
# Regenerates the Python modules and typed stubs beside the .proto files.
# Usage: proto/generate.sh   (with the dev dependencies installed)
set -euo pipefail
cd "$(dirname "$0")"
python=$(command -v "${PYTHON:-python}")
bin=$(dirname "$(command -v "$python")")
rm -f flowyard/v1/*_pb2.py flowyard/v1/*_pb2_grpc.py flowyard/v1/*.pyi
PATH="$bin:$PATH" "$python" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. --mypy_out=quiet:. --mypy_grpc_out=quiet:. \
  flowyard/v1/*.proto
