#!/usr/bin/env bash
# Builds a Consul agent for the Consul tests (discovery, shared traffic state) from the Go
# module proxy: Consul 1.16.1, the last release under the MPL-2.0 (later ones are not open
# source). Its go.mod points its own sub-modules at sibling folders, which a module download
# does not contain, so they are downloaded at the versions it requires and put in place.
# A consul already on PATH is used instead. Usage: scripts/install_consul.sh TOOLS
set -euo pipefail
tools=${1:?install folder}
version=v1.16.1
mkdir -p "$tools/bin"
# Go's usual places, for a shell whose PATH lacks them (CI runs with a minimal one).
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
if found=$(command -v consul); then
    ln -sf "$found" "$tools/bin/consul"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "the Consul tests need a consul agent: install Go (to build one) or put consul on PATH" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
source_dir() { go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }
cp -r "$(source_dir "github.com/hashicorp/consul@$version")" "$work/consul"
chmod -R u+w "$work/consul"
for sub in api envoyextensions proto-public sdk troubleshoot; do
    required=$(awk -v m="github.com/hashicorp/consul/$sub" '$1 == m && $2 ~ /^v/ {print $2}' "$work/consul/go.mod")
    rm -rf "${work:?}/consul/$sub"
    cp -r "$(source_dir "github.com/hashicorp/consul/$sub@$required")" "$work/consul/$sub"
    chmod -R u+w "$work/consul/$sub"
done
(cd "$work/consul" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$work/consul-bin" .)
mv "$work/consul-bin" "$tools/bin/consul"
"$tools/bin/consul" version | sed -n 1p
