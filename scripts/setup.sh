#!/usr/bin/env bash
# Host set-up shared by the README's commands, CI and the Vagrant provisioning: Debian packages
# (DPDK 22.11, clang for bindgen, network tools), hugepages, and a Rust toolchain check.
# Idempotent; needs root. Usage: scripts/setup.sh [--persist] [--bench]  (--persist also writes
# the hugepage reservation to /etc/sysctl.d and /etc/fstab, for VMs that reboot; --bench also
# installs Open vSwitch's DPDK build for `tsmp-pktgen bench`, with its system services left
# stopped and disabled: the benchmark runs its own instance from a temporary directory).
set -euo pipefail

PERSIST=0
BENCH=0
for a in "$@"; do
    case "$a" in
        --persist) PERSIST=1 ;;
        --bench) BENCH=1 ;;
        *) echo "setup: unknown option $a (use --persist, --bench)" >&2; exit 2 ;;
    esac
done

HUGEPAGES="${TSMP_HUGEPAGES:-512}"   # 2 MiB pages: 1 GiB

if [ "$(id -u)" != 0 ]; then
    echo "setup: needs root (apt-get, hugepages, network namespaces): run it with sudo" >&2
    exit 1
fi

PKGS=(dpdk dpdk-dev libdpdk-dev pkg-config clang libclang-dev build-essential
      iproute2 iputils-ping ethtool procps python3 kmod nftables bind9-dnsutils tcpdump ruby)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
pkg-config --atleast-version=22.11 libdpdk || {
    echo "setup: DPDK >= 22.11 not found by pkg-config after installing libdpdk-dev" >&2; exit 1; }

# Hugepages: mount hugetlbfs and reserve 2 MiB pages (keep a larger existing reservation).
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ "$(cat "$nr")" -lt "$HUGEPAGES" ]; then
    echo "$HUGEPAGES" > "$nr"
fi
if [ "$(cat "$nr")" -lt "$HUGEPAGES" ]; then
    echo "setup: warning: only $(cat "$nr") of $HUGEPAGES hugepages could be reserved (memory fragmented?)" >&2
fi
if [ "$PERSIST" = 1 ]; then
    echo "vm.nr_hugepages = $HUGEPAGES" > /etc/sysctl.d/80-tsmp-hugepages.conf
    grep -q '^nodev /dev/hugepages' /etc/fstab || echo 'nodev /dev/hugepages hugetlbfs defaults 0 0' >> /etc/fstab
fi

# Open vSwitch with DPDK for the side-by-side benchmark, installed without starting its
# services (policy-rc.d 101 is Debian's "do not start daemons"), which are then disabled.
if [ "$BENCH" = 1 ] && ! dpkg-query -W -f='${Status}' openvswitch-switch-dpdk 2>/dev/null | grep -q "install ok installed"; then
    echo "setup: installing openvswitch-switch-dpdk (services stay stopped)"
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1 && cp -p /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.tsmp-saved
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openvswitch-switch-dpdk >/dev/null || rc=$?
    if [ "$had_policy" = 1 ]; then mv /usr/sbin/policy-rc.d.tsmp-saved /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
    [ "${rc:-0}" = 0 ] || { echo "setup: apt-get install openvswitch-switch-dpdk failed" >&2; exit 1; }
    if [ -d /run/systemd/system ]; then
        systemctl disable --now openvswitch-switch.service ovs-vswitchd.service ovsdb-server.service >/dev/null 2>&1 || true
    fi
fi

# Rust: the project needs a current stable toolchain (cargo >= 1.80), e.g. from rustup.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && export PATH="$d:$PATH" && break
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found: install a Rust toolchain (https://rustup.rs, or your mirror of it)" >&2
    exit 1
fi
echo "setup: DPDK $(pkg-config --modversion libdpdk), $(cargo --version), hugepages $(cat "$nr") x 2 MiB"
