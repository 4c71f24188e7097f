#!/usr/bin/env bash
# Regenerates auditv1/ (committed) from proto/ with Debian bookworm's protoc 3.21.12,
# protoc-gen-go 1.28.1 and protoc-gen-go-grpc 1.33.3 (packages protobuf-compiler,
# protoc-gen-go, protoc-gen-go-grpc). `generate.sh DIR` writes DIR/auditv1 instead (the
# Rust test compares it with the committed one).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
module=example.com/audit-gateway/examples/go
map="Mconfluence/audit/v1/audit.proto=$module/auditv1"
mkdir -p "$out/auditv1"
protoc -I "$here/../../proto" \
  --go_out="$out" --go_opt="module=$module,$map" \
  --go-grpc_out="$out" --go-grpc_opt="module=$module,$map" \
  confluence/audit/v1/audit.proto
