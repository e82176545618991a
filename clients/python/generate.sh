#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs for mcpd's API into mcpd_pb/.
# Usage: ./generate.sh   (from any directory; uses the `python` on PATH,
# which needs grpcio-tools, e.g. the one of .venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$here/../../proto"
out="$here/mcpd_pb"

rm -rf "$out"
mkdir -p "$out"
# grpc_tools.protoc adds the well-known types (google/protobuf/*.proto) to
# the include path itself.
python -m grpc_tools.protoc \
  --proto_path="$proto_root" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$proto_root/mcpd/v1/mcpd.proto"
echo "generated $(find "$out" -name '*.py' | wc -l) modules in $out"
