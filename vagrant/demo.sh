#!/usr/bin/env bash
# The live migration across the Vagrant VMs: Bob's phone downloads Alice's video through the
# appliance's VIP, and its agent moves the connection to Bob's PC half-way; Alice's server
# never notices. Run on the host, in this folder, after `vagrant up`:
#
#   ./demo.sh
#
# It registers both devices with the naming server on the appliance (the TSIG key and the
# proxy's public key are read from the appliance over `vagrant ssh`), restarts the PC's
# listener, runs the applications of scripts/demo.py in the VMs (`demo.py app ...`), and
# judges from the outside: the phone's part of the video and the PC's part, cut at the resume
# offset the proxy reports, are compared by SHA-256 with Alice's file on Alice's VM; her
# server must finish without an error. TSMP_DEMO_VIDEO_MB (24) and TSMP_DEMO_RATE (bytes/s,
# 1000000) size the download.
set -euo pipefail
cd "$(dirname "$0")"

VIDEO_MB=${TSMP_DEMO_VIDEO_MB:-24}
RATE=${TSMP_DEMO_RATE:-1000000}
MARK=$(( VIDEO_MB < 8 ? (VIDEO_MB << 20) / 4 : 6 << 20 ))   # the phone's bytes before Bob walks home
D=/var/lib/tsmp-demo

say() { printf '%s\n' "$*"; }
fail() { say "demo: $*"; say "== VERDICT: FAIL"; exit 1; }

# Runs a command as root in a VM; its output without the terminal's carriage returns.
on() {
    local vm=$1; shift
    vagrant ssh "$vm" -c "sudo bash -c $(printf '%q' "$*")" -- -q 2>&1 | tr -d '\r'
    return "${PIPESTATUS[0]}"
}

# Waits (up to $2 seconds) until a line of the VM's file matches, and prints that line.
wait_for() {
    local vm=$1 secs=$2 file=$3 pattern=$4
    on "$vm" "for i in \$(seq 1 $(( secs * 5 ))); do grep -m1 -E '$pattern' $file && exit 0; sleep 0.2; done; exit 1"
}

command -v vagrant >/dev/null || fail "vagrant is not installed on this host"
status=$(vagrant status --machine-readable 2>/dev/null || true)
for vm in appliance alice phone pc; do
    grep -q "^[0-9]*,$vm,state,running" <<<"$status" ||
        fail "VM $vm is not running: run 'vagrant up' in $(pwd) first"
done

say "== the appliance: tsmp-proxy on virtio-net (DPDK net_virtio), tsmp-names next to it"
on appliance "systemctl is-active tsmp-proxy tsmp-names" >/dev/null ||
    fail "tsmp-proxy or tsmp-names is not running on the appliance: vagrant ssh appliance -c 'sudo journalctl -u tsmp-proxy -u tsmp-bind-nics'"
on appliance "grep -E '^pci|^name' /etc/tsmp/appliance.toml" | paste - - | sed 's/^/   /'
pub=$(on appliance "tsmp-proxy --config /etc/tsmp/appliance.toml --public-key") ||
    fail "cannot read the proxy's public key: $pub"
tsig=$(on appliance "cat /var/lib/tsmp/bob.tsig") || fail "no TSIG key for bob on the appliance: vagrant provision appliance"

say "== Bob's devices register with the naming server"
for dev in phone:198.18.0.1 pc:198.18.0.3; do
    name=${dev%%:*} addr=${dev#*:}
    out=$(on "$name" "tsmp-agent --state /var/lib/tsmp-agent register --names 198.18.0.254:53 \
        --zone tsmp.test --user bob --device $name --tsig '$tsig' --address $addr --port 7001 \
        --proxy 198.18.0.254:7000 --proxy-key '$pub' && mkdir -p $D && rm -f $D/video.bin && \
        systemctl restart tsmp-agent") || fail "$name: $out"
    say "   $name: $out"
done

say "== Alice serves a $VIDEO_MB MiB video at $(( RATE * 8 / 1000000 )) Mbit/s"
on alice "mkdir -p $D && head -c $(( VIDEO_MB << 20 )) /dev/urandom > $D/holiday.mp4 && \
    systemctl stop tsmp-demo-video 2>/dev/null; systemctl reset-failed tsmp-demo-video 2>/dev/null; \
    nstat -n; systemd-run -q --unit tsmp-demo-video --collect -p StandardOutput=file:$D/server.log \
    python3 /vagrant/scripts/demo.py app video-server $D/holiday.mp4 $RATE $D/samples" >/dev/null ||
    fail "cannot start Alice's server"
sleep 1

say "== Bob's phone plays it through the VIP 198.18.0.10:80"
on phone "systemctl stop tsmp-demo-phone 2>/dev/null; systemctl reset-failed tsmp-demo-phone 2>/dev/null; \
    rm -f $D/phone.bin; systemd-run -q --unit tsmp-demo-phone --collect \
    -p StandardOutput=file:$D/phone.log python3 /vagrant/scripts/demo.py app phone-video $MARK $D/phone.bin" >/dev/null
port=$(wait_for phone 30 $D/phone.log '^port') || fail "the phone did not connect: $(on phone "cat $D/phone.log")"
port=${port#port }
say "   198.18.0.1:$port -> 198.18.0.10:80"
wait_for phone 120 $D/phone.log '^mark' >/dev/null || fail "the phone did not get $MARK bytes"
say "   Bob walks home after $(( MARK >> 20 )) MiB"

say "== the phone's agent moves the download to the PC (tsmp-agent migrate $port --to pc)"
moved=$(on phone "tsmp-agent --state /var/lib/tsmp-agent migrate $port --to pc") || fail "migration refused: $moved"
sed 's/^/   /' <<<"$moved"
resume=$(grep -oE 'resume_offset=[0-9]+' <<<"$moved" | head -1 | cut -d= -f2)
[ -n "$resume" ] || fail "the agent's output has no resume_offset"

say "== the PC plays on; Alice's server finishes"
secs=$(( (VIDEO_MB << 20) / RATE + 60 ))
on alice "for i in \$(seq 1 $secs); do systemctl is-active -q tsmp-demo-video || exit 0; sleep 1; done; exit 1" ||
    fail "Alice's server is still sending after ${secs}s"
server=$(on alice "cat $D/server.log")
sed 's/^/   /' <<<"$server"
on alice "nstat TcpRetransSegs TcpExtTCPLostRetransmit TcpExtTCPTimeouts" | sed 's/^/   alice | /'

# The phone's part: the HTTP header, then body bytes up to the resume offset; the PC's part:
# the rest of the body. Each compared with the same range of Alice's file, on Alice's VM.
read -r hdr phone_sha < <(on phone "python3 -c 'import hashlib,sys; b=open(sys.argv[1],\"rb\").read()[:$resume]; \
    h=b.find(b\"\\r\\n\\r\\n\")+4; print(h, hashlib.sha256(b[h:]).hexdigest())' $D/phone.bin")
body=$(( resume - hdr ))
want_rest=$(( (VIDEO_MB << 20) - body ))
on pc "for i in \$(seq 1 150); do [ \$(stat -c %s $D/video.bin 2>/dev/null || echo 0) -ge $want_rest ] && exit 0; sleep 0.2; done; exit 1" ||
    say "   (the PC's file is shorter than the rest of the video)"
pc_sha=$(on pc "sha256sum < $D/video.bin | cut -d' ' -f1")
read -r alice_head alice_rest < <(on alice "python3 -c 'import hashlib,sys; b=open(sys.argv[1],\"rb\").read(); \
    print(hashlib.sha256(b[:$body]).hexdigest(), hashlib.sha256(b[$body:]).hexdigest())' $D/holiday.mp4")

say "== the appliance's view"
on appliance "tsmp-cli migrations" | sed 's/^/   /'

say "== verdict"
say "   phone: body bytes 0..$body  sha256 $phone_sha"
say "   alice:                       sha256 $alice_head"
say "   pc:    body bytes $body..    sha256 $pc_sha"
say "   alice:                       sha256 $alice_rest"
ok=1
[ "$phone_sha" = "$alice_head" ] || { ok=0; say "   the phone's part differs from Alice's file"; }
[ "$pc_sha" = "$alice_rest" ] || { ok=0; say "   the PC's part differs from Alice's file"; }
grep -q "without an error" <<<"$server" || { ok=0; say "   Alice's server saw an error"; }
if [ "$ok" = 1 ]; then
    say "== VERDICT: PASS (the video arrived whole, split across two devices; Alice's server never noticed)"
else
    say "== VERDICT: FAIL"
    exit 1
fi
