#!/usr/bin/env bash
# The main job: the appliance on its embedded default configuration (the full-NAT TCP proxy),
# between a client and a server namespace, with the kernel's own TCP on both ends. Needs root;
# installs what it needs (scripts/setup.sh) and removes everything it created on exit, Ctrl-C or
# failure.
#
#   ns tsmp-demo-client                 tsmp-proxy                            ns tsmp-demo-server
#   198.18.0.1 == tsmp-c0 [VIP 198.18.0.10:80 | SNAT 198.19.0.100] tsmp-s0 == 198.19.0.2:8080
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"

echo "== building (release)"
cargo build --release --locked --bin tsmp-proxy 2>&1 | tail -1
PROXY="$(pwd)/target/release/tsmp-proxy"

C=tsmp-demo-client S=tsmp-demo-server
WORK="$(mktemp -d /tmp/tsmp-demo.XXXXXX)"
PROXY_PID=""
cleanup() {
    set +e
    if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID"; wait "$PROXY_PID"
    fi
    ip netns del "$C" 2>/dev/null; ip netns del "$S" 2>/dev/null
    ip link del tsmp-c0 2>/dev/null; ip link del tsmp-s0 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== network: namespaces $C (198.18.0.1/24) and $S (198.19.0.2/24), veths tsmp-c0 and tsmp-s0"
cleanup; WORK="$(mktemp -d /tmp/tsmp-demo.XXXXXX)"
for side in c:$C:198.18.0.1 s:$S:198.19.0.2; do
    IFS=: read -r x ns addr <<<"$side"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "tsmp-${x}0" type veth peer name "tsmp-${x}0p"
    ip link set "tsmp-${x}0p" netns "$ns"
    ip -n "$ns" link set "tsmp-${x}0p" name eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
    sysctl -qw "net.ipv6.conf.tsmp-${x}0.disable_ipv6=1"
    ip link set "tsmp-${x}0" up
    ip -n "$ns" link set eth0 up
    ethtool -K "tsmp-${x}0" tx off rx off tso off gso off gro off >/dev/null
    ip netns exec "$ns" ethtool -K eth0 tx off rx off tso off gso off gro off >/dev/null
done

echo "== starting tsmp-proxy (embedded default configuration)"
"$PROXY" --stats-json "$WORK/stats.json" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do grep -q forwarding "$WORK/proxy.log" && break; sleep 0.2; done
grep -v -E '^(EAL|TELEMETRY)' "$WORK/proxy.log" | sed 's/^/   proxy | /'
grep -q forwarding "$WORK/proxy.log" || { echo "the proxy did not start"; exit 1; }

echo "== ping from the client to the service address (the appliance answers ARP and ping for it)"
ip netns exec "$C" ping -c 3 -i 0.2 198.18.0.10 | sed 's/^/   /'

echo "== TCP: the client downloads 64 MiB from http-like server 198.19.0.2:8080 through VIP 198.18.0.10:80"
head -c $((64 << 20)) /dev/urandom > "$WORK/file.bin"
WANT=$(sha256sum "$WORK/file.bin" | cut -d' ' -f1)
ip netns exec "$S" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(1); c, peer = s.accept()
print("   server: accepted a connection from %s:%d" % peer, flush=True)
c.sendall(open(sys.argv[1], "rb").read()); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()' "$WORK/file.bin" &
SERVER_PID=$!
sleep 0.3
START=$(date +%s.%N)
GOT=$(ip netns exec "$C" python3 -c '
import socket, hashlib
h = hashlib.sha256(); c = socket.create_connection(("198.18.0.10", 80), timeout=30)
print("   client: connected %s:%d -> %s:%d" % (c.getsockname() + c.getpeername()), flush=True)
while (b := c.recv(1 << 16)): h.update(b)
print(h.hexdigest())')
END=$(date +%s.%N)
wait "$SERVER_PID"
echo "$GOT" | head -n -1
GOT=$(echo "$GOT" | tail -n 1)
printf '   sent     sha256 %s\n   received sha256 %s\n   %.1f Mbit/s\n' "$WANT" "$GOT" "$(python3 -c "print(64*8*1.048576/($END-$START))")"

echo "== stopping the appliance (SIGTERM) and reading its counters"
kill -TERM "$PROXY_PID"; wait "$PROXY_PID"; PROXY_PID=""
grep -E '^(port|worker) .*(rx=|busy|proxy:|engines:)|stopped' "$WORK/proxy.log" | sed 's/^/   proxy | /'

if [ "$WANT" = "$GOT" ]; then
    echo "== VERDICT: PASS (the VIP answered; 64 MiB crossed the full-NAT splice intact)"
else
    echo "== VERDICT: FAIL (the received data differs)"; exit 1
fi
