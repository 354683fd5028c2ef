#!/usr/bin/env bash
# Provisioning of the Vagrant VMs (run by `vagrant up` as root inside each VM; the repository is
# at /vagrant). Idempotent: `vagrant provision` runs it again after a `vagrant rsync`.
#
#   provision.sh appliance             DPDK, persisted hugepages, the release build, the data
#                                      NICs bound at boot, tsmp-proxy and tsmp-names as services
#   provision.sh device NAME ADDRESS   tsmp-agent built and its listener as a service (started
#                                      once the device is registered: vagrant/demo.sh does that)
#   provision.sh server NAME ADDRESS   Alice's VM: Python for the demo's server
#
# The package and hugepage set-up is scripts/setup.sh, the same script the README's commands
# run on a bare machine.
set -euo pipefail

SRC=/vagrant
role=${1:?usage: provision.sh appliance | device NAME ADDRESS | server NAME ADDRESS}
export CARGO_TARGET_DIR=/var/cache/tsmp/target
export DEBIAN_FRONTEND=noninteractive

# A Rust toolchain from rustup when the VM has none (Debian 12's rustc is older than the
# project needs); the VMs have the internet through their management NIC.
rust() {
    if ! command -v cargo >/dev/null 2>&1 && ! [ -x /root/.cargo/bin/cargo ]; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
    export PATH="/root/.cargo/bin:$PATH"
}

# Builds the named binaries from /vagrant and installs them in /usr/local/bin; FEATURES (e.g.
# --no-default-features: without the DPDK data plane) goes to cargo.
build() {
    rust
    local args=() bins=()
    for b in "$@"; do
        case "$b" in -*) args+=("$b") ;; *) args+=(--bin "$b"); bins+=("$b") ;; esac
    done
    (cd "$SRC" && cargo build --release --locked "${args[@]}")
    for b in "${bins[@]}"; do install -m 0755 "$CARGO_TARGET_DIR/release/$b" /usr/local/bin/; done
}

unit() {
    install -m 0644 "$SRC/vagrant/systemd/$1" /etc/systemd/system/
}

case "$role" in
appliance)
    # Packages and 1 GiB of hugepages, persisted (/etc/sysctl.d, /etc/fstab) for reboots.
    rust
    "$SRC/scripts/setup.sh" --persist
    build tsmp-proxy tsmp-names tsmp-cli
    install -d -m 0755 /etc/tsmp /usr/local/share/tsmp
    install -d -m 0700 /var/lib/tsmp
    install -m 0644 "$SRC/dpdk-config/vagrant-virtio.toml" /usr/local/share/tsmp/vagrant-virtio.toml
    install -m 0755 "$SRC/vagrant/tsmp-bind-nics" /usr/local/sbin/tsmp-bind-nics
    # The data NICs (MACs from the Vagrantfile) and the driver, read at every boot.
    cat > /etc/tsmp/nics.env <<EOF
TSMP_NICS="${TSMP_NICS:?the Vagrantfile passes TSMP_NICS}"
TSMP_NIC_DRIVER="${TSMP_NIC_DRIVER:-vfio-pci}"
EOF
    if [ "${TSMP_NIC_DRIVER:-vfio-pci}" = vfio-pci ]; then
        echo "options vfio enable_unsafe_noiommu_mode=1" > /etc/modprobe.d/tsmp-vfio.conf
    fi
    # The naming server's user for the demo; its TSIG key stays on the appliance (demo.sh
    # reads it over vagrant ssh to register the devices).
    if ! [ -e /var/lib/tsmp/names/keys/bob.key ]; then
        tsmp-names --dir /var/lib/tsmp/names add-user bob > /var/lib/tsmp/bob.tsig
        chmod 0600 /var/lib/tsmp/bob.tsig
    fi
    unit tsmp-bind-nics.service
    unit tsmp-proxy.service
    unit tsmp-names.service
    systemctl daemon-reload
    systemctl enable tsmp-bind-nics.service tsmp-proxy.service tsmp-names.service
    systemctl restart tsmp-bind-nics.service tsmp-proxy.service
    systemctl restart tsmp-names.service
    # The proxy's key ([control] key) exists once it ran; its public half is what agents check.
    for _ in $(seq 1 60); do
        systemctl is-active -q tsmp-proxy.service && [ -S /run/tsmp/tsmp.sock ] && break
        sleep 1
    done
    systemctl --no-pager --lines=20 status tsmp-proxy.service || {
        echo "provision: tsmp-proxy did not start; see journalctl -u tsmp-proxy" >&2; exit 1; }
    tsmp-cli stats || true
    ;;
device)
    name=${2:?device NAME ADDRESS} addr=${3:?device NAME ADDRESS}
    # No DPDK on a device: the same set-up without hugepages, the agent built without the
    # data plane.
    rust
    TSMP_HUGEPAGES=0 "$SRC/scripts/setup.sh"
    build --no-default-features tsmp-agent
    install -d -m 0700 /var/lib/tsmp-agent
    install -d -m 0755 /etc/tsmp /var/lib/tsmp-demo
    # What the listener does with the connections it takes over (the demo's routes): the
    # video to a file (a player would read its stdin), the chat to an application on the
    # device's local port 6667.
    cat > /etc/tsmp/agent.env <<EOF
TSMP_DEVICE=$name
TSMP_ADDRESS=$addr
TSMP_AGENT_ROUTES=--on 198.18.0.10:80=exec:cat>/var/lib/tsmp-demo/video.bin --on 198.18.0.10:6667=local:127.0.0.1:6667
EOF
    unit tsmp-agent.service
    systemctl daemon-reload
    systemctl enable tsmp-agent.service
    systemctl restart tsmp-agent.service || true   # waits for registration (ConditionPath)
    ;;
server)
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 iproute2 tcpdump >/dev/null
    install -d -m 0755 /var/lib/tsmp-demo
    ;;
*)
    echo "provision.sh: unknown role $role (appliance, device or server)" >&2
    exit 2
    ;;
esac
echo "provision: $role ready"
