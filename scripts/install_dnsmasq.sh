#!/usr/bin/env bash
# Installs dnsmasq for the DNS-discovery tests (a real DNS server on loopback), without root:
# Debian's packages are downloaded and unpacked into $TOOLS/dnsmasq, with a wrapper
# $TOOLS/bin/dnsmasq that finds their libraries. A dnsmasq already on PATH is used instead.
# Usage: scripts/install_dnsmasq.sh TOOLS
set -euo pipefail
tools=${1:?install folder}
mkdir -p "$tools/bin"
if found=$(command -v dnsmasq); then
    ln -sf "$found" "$tools/bin/dnsmasq"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "dnsmasq is needed by the DNS-discovery tests: install it (e.g. 'apt-get install dnsmasq-base')" >&2
    exit 2
fi
root="$tools/dnsmasq"
downloads=$(mktemp -d)
trap 'rm -rf "$downloads"' EXIT
# dnsmasq-base and the libraries a minimal Debian 12 lacks.
packages=(dnsmasq-base libnetfilter-conntrack3 libnftables1 libnfnetlink0 libmnl0 libnftnl11
    libjansson4 libxtables12)
download() {
    (cd "$downloads" && apt-get download -qq "${packages[@]}") >"$downloads/apt.log" 2>&1
}
# apt's own last line says what went wrong (a package not found, a mirror not reached).
apt_said() { grep -v '^\s*$' "$downloads/apt.log" | tail -n 1; }
if ! download; then
    # A fresh machine or container has empty package lists: fetch them, then try again.
    if ! apt-get update -qq >"$downloads/apt.log" 2>&1; then
        echo "install_dnsmasq: 'apt-get update' failed ($(apt_said)): install dnsmasq (e.g. 'apt-get install dnsmasq-base') or fix the apt sources, then run 'make test' again" >&2
        exit 2
    fi
    if ! download; then
        echo "install_dnsmasq: 'apt-get download dnsmasq-base' failed after 'apt-get update' ($(apt_said)): install dnsmasq (e.g. 'apt-get install dnsmasq-base'), then run 'make test' again" >&2
        exit 2
    fi
fi
rm -rf "$root"
for package in "$downloads"/*.deb; do
    dpkg -x "$package" "$root"
done
cat > "$tools/bin/dnsmasq" <<WRAPPER
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$(cd "$root" && pwd)/usr/lib/x86_64-linux-gnu:$(cd "$root" && pwd)/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$(cd "$root" && pwd)/usr/sbin/dnsmasq" "\$@"
WRAPPER
chmod +x "$tools/bin/dnsmasq"
"$tools/bin/dnsmasq" --version | sed -n 1p
