#!/usr/bin/env bash
# Builds tgw-edge, the compiled HTTP/2 fast path, and installs it beside the project's Python
# (where the gateway looks for it). Crates come from Debian's librust-*-dev packages, so the
# build needs no crates.io access: edge/.cargo/config.toml points cargo at them.
# Usage: scripts/build_edge.sh VENV_BIN_DIR
set -euo pipefail
# Prefer a rustup toolchain when there is one; Debian's cargo is the fallback.
export PATH="$HOME/.cargo/bin:$PATH"
bin_dir=$(cd "${1:?bin folder of the project environment}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
crates=(librust-hyper-dev librust-tokio-dev librust-h2-dev librust-http-body-dev
        librust-bytes-dev librust-serde-json-dev)

missing=()
for crate in "${crates[@]}"; do
    dpkg-query -W -f='${Status}' "$crate" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$crate")
done
if ! command -v cargo >/dev/null 2>&1; then
    missing+=(cargo)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cd "$here/edge"
cargo build --release --offline --quiet
install -m 0755 target/release/tgw-edge "$bin_dir/tgw-edge"
