#!/usr/bin/env bash
# Builds tgw-edge, the HTTP/2 data plane, and installs it beside the project's Python (where
# the gateway looks for it). Crates come from the crates registry at the versions pinned in
# edge/Cargo.lock (Rust 1.88 or newer).
# Usage: scripts/build_edge.sh VENV_BIN_DIR
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
bin_dir=$(cd "${1:?bin folder of the project environment}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v cargo >/dev/null 2>&1; then
    echo "build_edge: no Rust toolchain: install Rust 1.88 or newer with rustup, then run 'make install' again" >&2
    exit 1
fi

cd "$here/edge"
cargo build --release --locked --quiet
install -m 0755 target/release/tgw-edge "$bin_dir/tgw-edge"
