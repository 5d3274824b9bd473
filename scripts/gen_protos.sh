#!/usr/bin/env bash
# Generates Python messages, gRPC stubs and .pyi type stubs for every proto under $2 into $3.
# protoc names modules after proto paths (meshllm.inference.v1...); the stubs live under the
# meshllm.api package, so the generated imports are rewritten to that prefix here, never by hand.
# A vendored API (protos/<name>/ beside protos/meshllm/, e.g. KEDA's externalscaler) keeps its
# own proto package and lands beside ours as meshllm.api.<name>.
set -euo pipefail
py="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" src=$2 out=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mapfile -t protos < <(cd "$src" && find . -name '*.proto' -printf '%P\n' | sort)
mapfile -t vendored < <(cd "$src" && find . -mindepth 1 -maxdepth 1 -type d ! -name meshllm -printf '%P\n' | sort)
(cd "$src" && "$py" -m grpc_tools.protoc -I . \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" "${protos[@]}")
# .py: only import lines (the serialized descriptors hold the proto package names and must
# stay byte-exact); .pyi: every reference.
find "$tmp" -type f -name '*.py' -exec \
  sed -i -E 's/^(from|import) meshllm\.([a-z_]+)\.(v[0-9]+)\b/\1 meshllm.api.\2.\3/' {} +
find "$tmp" -type f -name '*.pyi' -exec \
  sed -i -E 's/\bmeshllm\.([a-z_]+)\.(v[0-9]+)\b/meshllm.api.\1.\2/g' {} +
for name in "${vendored[@]}"; do
  find "$tmp" -type f \( -name '*.py' -o -name '*.pyi' \) -exec \
    sed -i -E "s/^from ${name}(\.[a-z_.]+)? import /from meshllm.api.${name}\1 import /" {} +
  mv "$tmp/$name" "$tmp/meshllm/$name"
done
find "$tmp/meshllm" -type d -exec sh -c 'for d; do [ -f "$d/__init__.py" ] || : > "$d/__init__.py"; done' sh {} +
rm -f "$tmp/meshllm/__init__.py"
find "$out" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
cp -r "$tmp/meshllm/." "$out/"
