#!/usr/bin/env bash
# Builds the example offline into $1 (default ./auditclient) against the Go packages Debian
# installs under /usr/share/gocode (golang-google-grpc-dev, golang-google-protobuf-dev):
# GOPATH mode, with this directory linked into a temporary GOPATH as
# example.com/audit-gateway/examples/go. No module download is needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/auditclient}")"
# Go keeps its build cache under $HOME; give it one where there is no home (some CI).
[ -n "${GOCACHE:-}${XDG_CACHE_HOME:-}${HOME:-}" ] || export GOCACHE="${TMPDIR:-/tmp}/go-build-cache"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/example.com/audit-gateway/examples"
ln -s "$here" "$gopath/src/example.com/audit-gateway/examples/go"
cd "$gopath/src/example.com/audit-gateway/examples/go"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS= \
  go build -o "$out" example.com/audit-gateway/examples/go
