#!/usr/bin/env bash
# The main job: a live migration through the appliance on its embedded default configuration,
# with the kernel's own TCP everywhere. Bob's phone downloads a file from Alice's server through
# the service address; halfway, the phone hands the connection to Bob's PC; the server never
# notices. Needs root; installs what it needs (scripts/setup.sh) and removes everything it
# created on exit, Ctrl-C or failure.
#
#   ns tsmp-demo-phone 198.18.0.1 ──┐                                       ns tsmp-demo-server
#                                   ├─ bridge ─ tsmp-c0 [tsmp-proxy] tsmp-s0 ─ 198.19.0.2:8080
#   ns tsmp-demo-pc    198.18.0.3 ──┘  VIP 198.18.0.10:80, migration ports 40000.., SNAT 198.19.0.100
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"

echo "== building (release)"
cargo build --release --locked --bin tsmp-proxy 2>&1 | tail -1
PROXY="$(pwd)/target/release/tsmp-proxy"

S=tsmp-demo-server P=tsmp-demo-phone C=tsmp-demo-pc
SOCK=/run/tsmp/tsmp.sock
TOTAL=$((32 << 20)) HANDOVER=$((8 << 20)) FREEZE_CHECK=0.3
WORK="$(mktemp -d /tmp/tsmp-demo.XXXXXX)"
PROXY_PID=""
cleanup() {
    set +e
    jobs -p | xargs -r kill 2>/dev/null
    if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID"; wait "$PROXY_PID"
    fi
    for ns in $S $P $C; do ip netns del "$ns" 2>/dev/null; done
    for l in tsmp-c0 tsmp-s0 tsmp-ph tsmp-pc tsmp-br0; do ip link del "$l" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup; WORK="$(mktemp -d /tmp/tsmp-demo.XXXXXX)"

offload_off() { ethtool -K "$1" tx off rx off tso off gso off gro off >/dev/null; }
echo "== network: $S (198.19.0.2), $P (198.18.0.1) and $C (198.18.0.3); phone and PC bridged to the proxy"
ip link add tsmp-br0 type bridge
ip link add tsmp-c0 type veth peer name tsmp-c0b
for l in tsmp-c0 tsmp-c0b; do offload_off "$l"; sysctl -qw "net.ipv6.conf.$l.disable_ipv6=1"; done
ip link set tsmp-c0b master tsmp-br0
for spec in "$S:tsmp-s0:198.19.0.2" "$P:tsmp-ph:198.18.0.1" "$C:tsmp-pc:198.18.0.3"; do
    IFS=: read -r ns host addr <<<"$spec"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "$host" type veth peer name "${host}p"
    ip link set "${host}p" netns "$ns"
    ip -n "$ns" link set "${host}p" name eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
    sysctl -qw "net.ipv6.conf.$host.disable_ipv6=1"
    offload_off "$host"
    ip netns exec "$ns" ethtool -K eth0 tx off rx off tso off gso off gro off >/dev/null
    ip -n "$ns" link set eth0 up
    [ "$host" = tsmp-s0 ] || ip link set "$host" master tsmp-br0
done
for l in tsmp-br0 tsmp-c0 tsmp-c0b tsmp-s0 tsmp-ph tsmp-pc; do ip link set "$l" up; done

echo "== starting tsmp-proxy (embedded default configuration)"
"$PROXY" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do grep -q forwarding "$WORK/proxy.log" && break; sleep 0.2; done
grep -v -E '^(EAL|TELEMETRY)' "$WORK/proxy.log" | sed 's/^/   proxy | /'
grep -q forwarding "$WORK/proxy.log" || { echo "the proxy did not start"; exit 1; }

# The server's kernel TCP counters that would show it noticed (read in its own namespace).
counters() {
    ip netns exec "$S" cat /proc/net/snmp /proc/net/netstat | python3 -c '
import sys
lines = sys.stdin.read().splitlines(); v = {}
for h, d in zip(lines[0::2], lines[1::2]):
    p, names = h.split(":", 1); vals = d.split(":", 1)[1]
    v.update({p + ":" + n: int(x) for n, x in zip(names.split(), vals.split())})
keys = ["Tcp:RetransSegs", "Tcp:OutRsts", "TcpExt:TCPTimeouts", "TcpExt:TCPLossProbes",
        "TcpExt:TCPSpuriousRTOs", "TcpExt:TCPChallengeACK", "TcpExt:PAWSEstab",
        "TcpExt:TCPAbortOnData", "TcpExt:TCPSlowStartRetrans"]
print(" ".join("%s=%d" % (k, v.get(k, 0)) for k in keys))'
}

echo "== Alice's server streams $((TOTAL >> 20)) MiB (paced, 8 MB/s) to whoever connects to 198.19.0.2:8080"
ip netns exec "$S" python3 -c '
import socket, sys, time, hashlib
total = int(sys.argv[1]); h = hashlib.sha256()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(1); c, peer = s.accept()
print("   server: connection from %s:%d (the proxy'"'"'s SNAT address)" % peer, flush=True)
pat = bytes(i * 7 % 256 for i in range(65536 + 256)); sent = 0
while sent < total:
    b = pat[sent % 256:sent % 256 + 65536]
    c.sendall(b); h.update(b); sent += len(b); time.sleep(0.008)
c.close()
print("   server: sent %d bytes without an error, sha256 %s" % (sent, h.hexdigest()), flush=True)
open(sys.argv[2], "w").write(h.hexdigest())' "$TOTAL" "$WORK/server.sha" &
SERVER_PID=$!
sleep 0.3
BEFORE_ALL=$(counters)

echo "== Bob's phone downloads through the VIP and plays; after $((HANDOVER >> 20)) MiB Bob moves to his PC"
ip netns exec "$P" python3 -c '
import socket, sys
mark = int(sys.argv[1]); out = open(sys.argv[2], "wb")
s = socket.create_connection(("198.18.0.10", 80), timeout=30)
print("port", s.getsockname()[1], flush=True)
got = 0
try:
    while (b := s.recv(65536)):
        out.write(b); got += len(b)
        if got >= mark > got - len(b):
            print("mark", got, flush=True)
except ConnectionResetError:
    pass
out.close()
print("phone: played %d bytes until the proxy closed its connection" % got, flush=True)
' "$HANDOVER" "$WORK/phone.bin" > "$WORK/phone.out" &
PHONE_PID=$!
for _ in $(seq 400); do grep -q '^mark' "$WORK/phone.out" && break; sleep 0.01; done
PHONE_PORT=$(awk '/^port/ {print $2}' "$WORK/phone.out")
echo "   phone: 198.18.0.1:$PHONE_PORT -> 198.18.0.10:80, still playing"
BEFORE=$(counters)

echo "== migration request on the control socket (resume at the phone's last acknowledged byte)"
REQ="{\"migrate\": {\"client\": \"198.18.0.1:$PHONE_PORT\", \"vip\": \"198.18.0.10:80\"}}"
echo "   -> $REQ"
REPLY=$(python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);
s.sendall(sys.argv[2].encode()+b"\n"); print(s.makefile().readline(), end="")' "$SOCK" "$REQ")
echo "   <- $REPLY"
MPORT=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"]["migration_port"])' "$REPLY")
# The server is frozen now; longer than Linux's minimum RTO later, nothing may have moved.
sleep "$FREEZE_CHECK"
FROZEN=$(counters)

echo "== Bob's PC connects to the migration port 198.18.0.10:$MPORT and plays on"
ip netns exec "$C" python3 -c '
import socket, sys
s = socket.create_connection(("198.18.0.10", int(sys.argv[1])), timeout=30)
print("   pc: connected %s:%d -> %s:%d" % (s.getsockname() + s.getpeername()), flush=True)
out = open(sys.argv[2], "wb"); n = 0
while (b := s.recv(65536)): out.write(b); n += len(b)
print("   pc: received %d bytes, then the end of the stream" % n, flush=True)' "$MPORT" "$WORK/pc.bin" &
PC_PID=$!
wait "$PC_PID"
wait "$SERVER_PID"
wait "$PHONE_PID" || true
sed -n 's/^phone: /   phone: /p' "$WORK/phone.out"
AFTER=$(counters)

echo "== timeline (the proxy's log)"
grep '^migration ' "$WORK/proxy.log" | sed 's/^/   /'
python3 - "$WORK/proxy.log" <<'EOF'
import re, sys
t = {m.group(1): float(m.group(2)) for m in
     re.finditer(r"^migration \S+ \S+ (\w+) t=([\d.]+)ms", open(sys.argv[1]).read(), re.M)}
if {"paused", "connected", "resumed"} <= t.keys():
    print("   server frozen %.1f ms in all: %.1f ms waiting for the PC, %.1f ms handshake and replay"
          % (t["resumed"] - t["paused"], t["connected"] - t["paused"], t["resumed"] - t["connected"]))
EOF

echo "== the server's kernel counters (its namespace)"
printf '   %-22s %s\n' "before the request:" "$BEFORE" "frozen for ${FREEZE_CHECK} s:" "$FROZEN" "at the end:" "$AFTER"

echo "== stopping the appliance (SIGTERM) and reading its counters"
kill -TERM "$PROXY_PID"; wait "$PROXY_PID"; PROXY_PID=""
grep -E '^(port|worker) .*(rx=|busy|proxy:|engines:)|stopped' "$WORK/proxy.log" | sed 's/^/   proxy | /'

WANT=$(cat "$WORK/server.sha")
RESUME=$(sed -n 's/.* connected .*resume_offset=\([0-9]*\).*/\1/p' "$WORK/proxy.log")
# The phone played up to the resume point (bytes it received after it are the PC's too).
GOT=$( (head -c "$RESUME" "$WORK/phone.bin"; cat "$WORK/pc.bin") | sha256sum | cut -d' ' -f1)
echo "   server sent                          sha256 $WANT"
echo "   phone up to byte $RESUME + PC after it sha256 $GOT"
moved() { python3 -c '
import sys
a = dict(kv.split("=") for kv in sys.argv[1].split()); b = dict(kv.split("=") for kv in sys.argv[2].split())
keys = sys.argv[3].split(",") if len(sys.argv) > 3 else list(a)
print(" ".join("%s+%d" % (k, int(b[k]) - int(a[k])) for k in keys if a[k] != b[k]))' "$@"; }
FROZEN_MOVED=$(moved "$BEFORE" "$FROZEN")
EVER_MOVED=$(moved "$BEFORE_ALL" "$AFTER" "Tcp:OutRsts,TcpExt:TCPTimeouts,TcpExt:TCPChallengeACK,TcpExt:PAWSEstab,TcpExt:TCPAbortOnData")
if [ "$WANT" = "$GOT" ] && [ "$(stat -c %s "$WORK/phone.bin")" -ge "$RESUME" ] \
    && [ -z "$FROZEN_MOVED" ] && [ -z "$EVER_MOVED" ]; then
    echo "== VERDICT: PASS (the stream crossed devices intact; the server's TCP did not notice: no retransmission, probe, timeout, reset, challenge ACK or PAWS drop)"
else
    echo "== VERDICT: FAIL (hash ${GOT:0:12} vs ${WANT:0:12}; moved while frozen: ${FROZEN_MOVED:-none}; moved overall: ${EVER_MOVED:-none})"
    exit 1
fi
