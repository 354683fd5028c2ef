#!/usr/bin/env python3
"""The live-migration demo (draft section 3.1): Bob watches Alice's video and chats with her on
his phone, walks home, and moves both sessions to his PC; Alice's server never notices.

Run by scripts/demo.sh (which installs what is needed and builds the binaries), as root, on the
appliance's embedded default configuration. Everything runs here, with the kernel's own TCP:

  ns tsmp-demo-phone 198.18.0.1 (slow, lossy link) --+                          ns tsmp-demo-server
                                                     +- bridge - tsmp-c0 [tsmp-proxy] tsmp-s0 - 198.19.0.2
  ns tsmp-demo-pc    198.18.0.3 (fast link) ---------+   VIP 198.18.0.10 :80 video, :6667 chat
                                                         198.18.0.254: agents' port 7000, tsmp-names :53

The verdict is computed from the outside: the video's sha256 (the phone's part and the PC's
part, cut at the resume point the proxy reports), the chat lines the server heard (in order,
none lost or doubled), the server's kernel counters read in its own namespace, and its socket's
TCP_INFO. It writes a time-sequence plot of the server's stream (SVG). Everything it creates is
removed on exit, Ctrl-C or failure.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
S, P, C = "tsmp-demo-server", "tsmp-demo-phone", "tsmp-demo-pc"
LINKS = ["tsmp-c0", "tsmp-s0", "tsmp-ph", "tsmp-pc", "tsmp-br0", "tsmp-phl", "tsmp-pcl"]
VIDEO_BYTES = 12 << 20
# Bytes/s the server paces the video at (8 Mbit/s): below the phone's 10 Mbit/s, as a player's
# bitrate is, so the phone's link has no standing queue and control messages are not stuck in it.
VIDEO_RATE = 1_000_000
SETTLE_S = 1.0  # the migration's window ends this long after the server's window reopened
HANDOVER = 4 << 20  # Bob leaves after this much of the video
FREEZE_CHECK = 0.3  # seconds the counters are watched while the server is frozen
PLOT = os.path.join(ROOT, "target", "demo", "migration.svg")

WORK = tempfile.mkdtemp(prefix="tsmp-demo.")
procs = []
proxy = None


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit("%s: %s" % (" ".join(args), r.stderr.strip() or r.stdout.strip()))
    return r.stdout


def nsx(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    procs.append(p)
    return p


def cleanup():
    global proxy
    for p in reversed(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
    if proxy is not None and proxy.poll() is None:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=15)
    for ns in (S, P, C):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for link in LINKS:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    subprocess.run(["rm", "-rf", WORK])


def on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def say(text):
    print(text, flush=True)


# --- the applications (each runs in its namespace) -------------------------------------------

# Alice's video server: HTTP/1.1, one file, paced; samples its socket's TCP_INFO every 10 ms.
VIDEO_SERVER = r'''
import socket, struct, sys, threading, time, hashlib
path, rate, samples = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(path, "rb").read()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(4); c, peer = s.accept()
# CUBIC, Linux's default congestion control (some hosts default to BBR, which keeps no
# loss-based ssthresh to compare).
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
print("video server: connection from %s:%d (the proxy's SNAT address)" % peer, flush=True)
req = b""
while b"\r\n\r\n" not in req:
    req += c.recv(4096)
head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
sent = 0; done = False; out = open(samples, "w")
def info():
    b = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    u = struct.unpack_from("24I", b, 8)
    acked = struct.unpack_from("Q", b, 120)[0]
    # state ca_state cwnd ssthresh total_retrans rtt_us bytes_acked
    return (b[0], b[1], u[18], u[17], u[23], u[15], acked)
def sample():
    while not done:
        out.write("%.4f %d %s\n" % (time.time(), sent, " ".join(map(str, info())))); out.flush()
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
c.sendall(head); sent = len(head); t0 = time.time(); body = 0
while body < len(data):
    n = min(16384, len(data) - body)
    c.sendall(data[body:body + n]); body += n; sent += n
    lag = t0 + body / rate - time.time()
    if lag > 0:
        time.sleep(lag)
time.sleep(0.5)
out.write("%.4f %d %s\n" % (time.time(), sent, " ".join(map(str, info())))); done = True
c.close()
print("video server: sent %d bytes of video without an error" % body, flush=True)
'''

# Alice's chat server: answers every line of Bob's with an echo of its number; logs the lines.
CHAT_SERVER = r'''
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 6667)); s.listen(1); c, _ = s.accept()
f = c.makefile("rwb", buffering=0); log = open(sys.argv[1], "w")
for line in f:
    log.write(line.decode()); log.flush()
    f.write(b"alice: got " + line.split()[1] + b"\n")
print("chat server: Bob left the chat", flush=True)
'''

# The phone's video player: HTTP GET through the VIP, keeps the raw stream.
PHONE_VIDEO = r'''
import socket, sys
mark = int(sys.argv[1]); out = open(sys.argv[2], "wb", buffering=0)
s = socket.create_connection(("198.18.0.10", 80), timeout=30)
print("port", s.getsockname()[1], flush=True)
s.sendall(b"GET /holiday.mp4 HTTP/1.1\r\nHost: alice.example\r\n\r\n")
got = 0
try:
    while (b := s.recv(65536)):
        out.write(b); got += len(b)
        if got >= mark > got - len(b):
            print("mark", got, flush=True)
except (ConnectionResetError, TimeoutError):
    pass
print("phone video: %d bytes until the proxy closed the phone's connection" % got, flush=True)
'''

# A chat client: says numbered lines (each waits for Alice's answer) until told to stop (the
# file argv[3] appears) or `count` lines are said; a phone client then stays until the proxy
# closes its connection.
CHAT_CLIENT = r'''
import os, socket, sys, time
where, first, count, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if where == "vip":
    s = socket.create_connection(("198.18.0.10", 6667), timeout=30)
else:
    for _ in range(600):
        try:
            s = socket.create_connection(("127.0.0.1", 6667), timeout=30); break
        except OSError:
            time.sleep(0.02)
print("port", s.getsockname()[1], flush=True)
f = s.makefile("rwb", buffering=0); n = first
while n < first + count and not os.path.exists(stop):
    f.write(b"bob: %d still here\n" % n)
    if f.readline() != b"alice: got %d\n" % n:
        print("wrong answer", flush=True); sys.exit(1)
    n += 1; time.sleep(0.1)
print("said", n, flush=True)
if where == "vip":
    try:
        while s.recv(4096): pass
    except (ConnectionResetError, TimeoutError):
        pass
'''


def counters():
    text = sh(*nsx(S, "cat", "/proc/net/snmp", "/proc/net/netstat"))
    lines = text.splitlines()
    v = {}
    for h, d in zip(lines[0::2], lines[1::2]):
        p, names = h.split(":", 1)
        vals = d.split(":", 1)[1]
        v.update({p + ":" + n: int(x) for n, x in zip(names.split(), vals.split())})
    return v


WATCHED = ["Tcp:RetransSegs", "Tcp:OutRsts", "TcpExt:TCPTimeouts", "TcpExt:TCPLossProbes",
           "TcpExt:TCPSpuriousRTOs", "TcpExt:TCPLossUndo", "TcpExt:TCPChallengeACK",
           "TcpExt:PAWSEstab", "TcpExt:BeyondWindow", "TcpExt:TCPSACKReneging",
           "TcpExt:TCPAbortOnTimeout", "TcpExt:TCPAbortOnData"]
# Counters a lossy phone link may move by itself, but a migration never may.
NEVER = ["Tcp:OutRsts", "TcpExt:TCPChallengeACK", "TcpExt:PAWSEstab", "TcpExt:BeyondWindow",
         "TcpExt:TCPSACKReneging", "TcpExt:TCPAbortOnTimeout", "TcpExt:TCPAbortOnData",
         "TcpExt:TCPSpuriousRTOs"]


def moved(a, b, keys):
    return ["%s+%d" % (k, b.get(k, 0) - a.get(k, 0)) for k in keys if a.get(k, 0) != b.get(k, 0)]


def wait_line(p, prefix, timeout=30, stream="stdout"):
    end = time.time() + timeout
    while time.time() < end:
        line = getattr(p, stream).readline()
        if not line:
            break
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise SystemExit("no %r line in time" % prefix)


def network():
    def off(dev, ns=None):
        pre = nsx(ns) if ns else []
        subprocess.run(pre + ["ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off",
                              "gso", "off", "gro", "off"], capture_output=True)
    sh("ip", "link", "add", "tsmp-br0", "type", "bridge")
    sh("ip", "link", "add", "tsmp-c0", "type", "veth", "peer", "name", "tsmp-c0b")
    LINKS.append("tsmp-c0b")
    for link in ("tsmp-c0", "tsmp-c0b"):
        off(link)
        sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % link)
    sh("ip", "link", "set", "tsmp-c0b", "master", "tsmp-br0")
    for ns, host, addr in ((S, "tsmp-s0", "198.19.0.2"), (P, "tsmp-ph", "198.18.0.1"),
                           (C, "tsmp-pc", "198.18.0.3")):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", host + "p")
        sh("ip", "link", "set", host + "p", "netns", ns)
        sh("ip", "-n", ns, "link", "set", host + "p", "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", addr + "/24", "dev", "eth0")
        sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % host)
        off(host)
        off("eth0", ns)
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    # A device's veth ends at its link emulator; the emulator's other side is a veth pair whose
    # far end is on the bridge.
    for _, side, _, _ in SHAPES:
        sh("ip", "link", "add", side, "type", "veth", "peer", "name", side + "b")
        for link in (side, side + "b"):
            off(link)
            sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % link)
            sh("ip", "link", "set", link, "up")
        sh("ip", "link", "set", side + "b", "master", "tsmp-br0")
    for link in ("tsmp-br0", "tsmp-c0", "tsmp-c0b", "tsmp-s0", "tsmp-ph", "tsmp-pc"):
        sh("ip", "link", "set", link, "up")


# The links the design names, emulated by tsmp-linkem (this kernel has no netem) between each
# device's veth and the bridge: (veth, bridge side, toward the appliance, toward the device).
SHAPES = (
    ("tsmp-ph", "tsmp-phl", "delay=20ms,jitter=1ms,rate=10mbit,queue=128kb",
     "delay=20ms,jitter=1ms,rate=10mbit,queue=128kb,loss=0.5%"),
    ("tsmp-pc", "tsmp-pcl", "delay=2500us,rate=100mbit,queue=256kb",
     "delay=2500us,rate=100mbit,queue=256kb"),
)
SEED = int(os.environ.get("TSMP_DEMO_SEED", "1"))


def shape_links():
    """The phone's link: 10 Mbit/s, 40 ms RTT, 0.5% loss toward it; the PC's: 100 Mbit/s, 5 ms
    RTT. Each a tsmp-linkem between the device's veth and the bridge (on CPU 0, with the
    applications: CPU 1 is the appliance worker's)."""
    for i, (dev, bridge_side, up, down) in enumerate(SHAPES):
        stats = os.path.join(WORK, dev + "-link.json")
        p = spawn(["taskset", "-c", "0", os.path.join(BIN, "tsmp-linkem"), "--a", dev, "--b", bridge_side,
                   "--a-to-b", up, "--b-to-a", down, "--seed", str(SEED * 16 + i), "--stats", stats],
                  stdout=subprocess.PIPE, text=True)
        wait_line(p, "tsmp-linkem:")
    return ("phone 10 Mbit/s, 40 ms RTT, 0.5%% loss toward it; PC 100 Mbit/s, 5 ms RTT "
            "(tsmp-linkem, seed %d)" % SEED)


def link_counters():
    """What each emulated link did (its tsmp-linkem's counters)."""
    out = []
    for dev, _, _, _ in SHAPES:
        try:
            s = json.load(open(os.path.join(WORK, dev + "-link.json")))
        except (OSError, ValueError):
            continue
        name = "phone" if dev == "tsmp-ph" else "PC"
        for d, label in (("a_to_b", "up"), ("b_to_a", "down")):
            c = s[d]
            out.append("%s %s: %d frames, %d lost, %d queue drops" % (name, label, c["sent"], c["lost"], c["queue_drops"]))
    return out


def read_pcap(path):
    """The video's segments from tcpdump's capture, one list per segment: time, "out" (Alice
    sent it) or "in", seq, ack, window, payload length, "2" for a SYN else "0", and the window
    scale the SYN announces (-1 without one); all as strings, like a text dump."""
    data = open(path, "rb").read()
    out, i = [], 24
    while i + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, i)
        f = data[i + 16:i + 16 + caplen]
        i += 16 + caplen
        if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        ihl = (f[14] & 15) * 4
        tot = struct.unpack_from("!H", f, 16)[0]
        t = 14 + ihl
        sp, dp, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", f, t)
        hl, ws = (off >> 4) * 4, -1
        if flags & 2:
            k = t + 20
            while k < min(t + hl, len(f)):
                if f[k] == 0:
                    break
                if f[k] == 1:
                    k += 1
                    continue
                if f[k] == 3 and k + 2 < len(f):
                    ws = f[k + 2]
                k += max(f[k + 1], 2) if k + 1 < len(f) else 2
        out.append(["%d.%06d" % (sec, usec), "out" if sp == 8080 else "in", str(seq), str(ack),
                    str(win), str(tot - ihl - hl), "2" if flags & 2 else "0", str(ws)])
    return out


def freeze_seen(capture):
    """(isn, in-window scale, first zero-window ACK time, first reopened-window time) as Alice's
    kernel saw them in the capture; the times are None when it never saw a zero window."""
    isn = next((int(c[2]) for c in capture if c[1] == "out" and c[6] == "2"), 0)
    ws = next((int(c[7]) for c in capture if c[1] == "in" and c[6] == "2" and int(c[7]) >= 0), 0)
    zero = opened = None
    for c in capture:
        if c[1] != "in" or c[6] == "2":
            continue
        if zero is None and int(c[4]) == 0:
            zero = float(c[0])
        elif zero is not None and int(c[4]) > 0:
            opened = float(c[0])
            break
    return isn, ws, zero, opened


def retransmissions(capture):
    """Times of the data segments Alice sent again (their end not beyond what she had sent)."""
    isn = next((int(c[2]) for c in capture if c[1] == "out" and c[6] == "2"), 0)
    top, again = 0, []
    for c in capture:
        if c[1] == "out" and int(c[5]) > 0:
            end = ((int(c[2]) - isn - 1) & 0xffffffff) + int(c[5])
            if end <= top:
                again.append(float(c[0]))
            top = max(top, end)
    return again


def svg_plot(samples, capture, marks, path):
    """The server's stream through the migration. Top: the whole download (bytes written by the
    server's application, bytes acknowledged to it). Bottom: a time-sequence plot from the capture
    on Alice's interface around the migration: every data segment she sent, the ACKs and the
    window edge she received, the freeze (zero window) and the resume marked."""
    W, L, R = 900, 70, 20
    H1, H2, GAP = 260, 340, 60
    t0 = samples[0][0]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H1 + GAP + H2 + 40),
           '<rect width="100%" height="100%" fill="white"/>']

    def panel(y0, h, xs_range, ys_range, title, xlabel, ylabel, xticks, yticks):
        (x0, x1), (ya, yb) = xs_range, ys_range
        T, B = y0 + 30, y0 + h - 40
        X = lambda x: L + (W - L - R) * (x - x0) / ((x1 - x0) or 1)
        Y = lambda y: B - (B - T) * (y - ya) / ((yb - ya) or 1)
        out.append('<text x="%d" y="%d" font-size="14">%s</text>' % (L, y0 + 16, title))
        for y in yticks:
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>' % (L, W - R, Y(y), Y(y)))
            out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 6, Y(y) + 4, y))
        for x in xticks:
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (X(x), B + 16, x))
        out.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((W + L) // 2, B + 34, xlabel))
        mid = (T + B) // 2
        out.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">%s</text>' % (mid, mid, ylabel))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>' % (L, T, W - L - R, B - T))
        return X, Y, T, B

    def poly(X, Y, pts, color, step=False):
        if step:
            pts = [p for a, b in zip(pts, pts[1:] + pts[-1:]) for p in (a, (b[0], a[1]))]
        return '<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (
            color, " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y in pts))

    # Top: the whole download.
    xs = [s_[0] - t0 for s_ in samples]
    xmax = max(xs) or 1
    ymax = max(s_[1] for s_ in samples) / 2**20 * 1.05 or 1
    X, Y, T, B = panel(0, H1, (0, xmax), (0, ymax), "Alice's server: the whole download",
                       "seconds", "MiB", range(int(xmax) + 1), [round(ymax * i / 4, 1) for i in range(5)])
    out.append(poly(X, Y, [(x, s_[1] / 2**20) for x, s_ in zip(xs, samples)], "#1f77b4"))
    out.append(poly(X, Y, [(x, s_[8] / 2**20) for x, s_ in zip(xs, samples)], "#2ca02c"))
    mfr = dict(marks).get("MFR")
    if mfr:
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#c00" stroke-dasharray="4,3"/>' % (X(mfr - t0), X(mfr - t0), T, B))
        out.append('<text x="%.1f" y="%d" fill="#c00">migration to the PC (zoomed below)</text>' % (X(mfr - t0) + 6, B - 10))
    out.append('<text x="%d" y="%d" fill="#1f77b4">written by the server\'s application</text>' % (L + 10, T + 16))
    out.append('<text x="%d" y="%d" fill="#2ca02c">acknowledged to the server (tcpi_bytes_acked)</text>' % (L + 10, T + 32))

    # Bottom: the capture around the freeze.
    isn, ws, zero, opened = freeze_seen(capture)
    if zero is None:
        out.append('<text x="%d" y="%d" fill="#c00">the capture shows no zero window</text>' % (L, H1 + GAP + 40))
    else:
        opened = opened or zero
        lo = min(mfr or zero, zero) - 0.02
        hi = max(opened + 0.03, lo + 0.08)
        rel = lambda v: ((int(v) - isn - 1) & 0xffffffff) / 1024
        segs = [(float(c[0]), rel(c[2]), int(c[5])) for c in capture if c[1] == "out" and int(c[5]) > 0 and lo <= float(c[0]) <= hi]
        acks = [(float(c[0]), rel(c[3]), rel(c[3]) + (int(c[4]) << ws) / 1024) for c in capture if c[1] == "in" and c[6] != "2" and lo <= float(c[0]) <= hi]
        base = min([a[1] for a in acks] + [g[1] for g in segs] or [0])
        # The scale follows the data and the ACKs (and the window once frozen); the window edge
        # Alice had before, far above, is clipped at the top.
        top = max([a[1] for a in acks] + [a[2] for a in acks if a[0] >= zero]
                  + [g[1] + g[2] / 1024 for g in segs] or [base + 1])
        span_ms = (hi - lo) * 1000
        step = next(st for st in (5, 10, 20, 25, 50, 100, 200, 500, 1000) if span_ms / st <= 10)
        first = -(int((zero - lo) * 1000) // step) * step
        xt = [v for v in range(first, int((hi - zero) * 1000) + 1, step)]
        yr = top - base
        X, Y, T, B = panel(H1 + GAP, H2, ((lo - zero) * 1000, (hi - zero) * 1000), (0, yr * 1.08),
                           "Alice's interface around the migration (capture in her namespace)",
                           "ms from the first zero-window ACK Alice received", "KiB of the stream (relative)",
                           xt, [round(yr * i / 4) for i in range(5)])
        a, b_ = X((zero - zero) * 1000), X((opened - zero) * 1000)
        out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#fde2e2"/>' % (a, T + 1, max(b_ - a, 2), B - T - 1))
        for t, sq, n in segs:
            x = X((t - zero) * 1000)
            out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#1f77b4" stroke-width="2"/>' % (x, x, Y(sq - base), Y(sq - base + n / 1024)))
        out.append('<clipPath id="zoom"><rect x="%d" y="%d" width="%d" height="%d"/></clipPath>' % (L, T, W - L - R, B - T))
        out.append('<g clip-path="url(#zoom)">')
        out.append(poly(X, Y, [((t - zero) * 1000, ak - base) for t, ak, _ in acks], "#2ca02c", step=True))
        out.append(poly(X, Y, [((t - zero) * 1000, wn - base) for t, _, wn in acks], "#ff7f0e", step=True))
        out.append('</g>')
        labels = [("MFR sent", mfr)] + [(n, t) for n, t in marks if n not in ("MFR", "paused")]
        labels.append(("zero window: Alice frozen %.1f ms" % ((opened - zero) * 1000), zero))
        labels.append(("window reopened", opened))
        for k, (name, t) in enumerate(l for l in labels if l[1] is not None):
            x = X((t - zero) * 1000)
            y = T + 14 + 14 * k
            out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#c00" stroke-dasharray="3,3"/>' % (x, x, y + 2, B))
            out.append('<text x="%.1f" y="%d" fill="#c00" stroke="white" stroke-width="3" paint-order="stroke">%s</text>' % (x + 3, y, name))
        ly = B - 46
        out.append('<text x="%d" y="%d" fill="#1f77b4">data segments Alice sent</text>' % (W - R - 230, ly))
        out.append('<text x="%d" y="%d" fill="#2ca02c">ACKs Alice received</text>' % (W - R - 230, ly + 14))
        out.append('<text x="%d" y="%d" fill="#ff7f0e">window edge she was given</text>' % (W - R - 230, ly + 28))
    out.append("</svg>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    global proxy
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cleanup()
    os.makedirs(WORK, exist_ok=True)
    proxy_bin, names_bin, agent_bin = (os.path.join(BIN, b) for b in ("tsmp-proxy", "tsmp-names", "tsmp-agent"))

    say("== network: Alice's server %s (198.19.0.2), Bob's phone %s (198.18.0.1) and PC %s (198.18.0.3)" % (S, P, C))
    network()
    say("   links: " + shape_links())

    say("== tsmp-proxy on its embedded default configuration")
    log = open(os.path.join(WORK, "proxy.log"), "w")
    proxy = subprocess.Popen([proxy_bin], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(150):
        if "forwarding" in open(log.name).read() or proxy.poll() is not None:
            break
        time.sleep(0.1)
    text = open(log.name).read()
    for line in text.splitlines():
        # DPDK's own start-up chatter (EAL, the TAP driver's missing qdisc support) left out.
        if not line.startswith(("EAL", "TELEMETRY")) and not re.match(r"^\w+\(\): ", line):
            say("   proxy | " + line)
    if "forwarding" not in text:
        raise SystemExit("the proxy did not start")
    # The appliance's Ed25519 key ([control] key); the agents verify MTRs with its public half.
    pub = sh(proxy_bin, "--public-key").strip()

    say("== tsmp-names (the naming server) on 198.18.0.254:53, user bob")
    nd = os.path.join(WORK, "names")
    bob = sh(names_bin, "--dir", nd, "add-user", "bob").strip()
    spawn([names_bin, "--dir", nd, "serve", "--listen", "198.18.0.254:53"],
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)

    def agent(ns, dev, *args):
        return nsx(ns, agent_bin, "--state", os.path.join(WORK, "agent-" + dev), *args)

    for ns, dev, addr in ((P, "phone", "198.18.0.1"), (C, "pc", "198.18.0.3")):
        out = sh(*agent(ns, dev, "register", "--names", "198.18.0.254:53", "--zone", "tsmp.test",
                        "--user", "bob", "--device", dev, "--tsig", bob, "--address", addr,
                        "--port", "7001", "--proxy", "198.18.0.254:7000", "--proxy-key", pub))
        say("   %s agent: %s" % (dev, out.strip()))
    say("   dig @198.18.0.254 pc.bob.tsmp.test (from the phone): " +
        sh(*nsx(P, "dig", "+short", "@198.18.0.254", "pc.bob.tsmp.test", "A")).strip())
    pc_video = os.path.join(WORK, "pc-video.bin")
    pc_agent = spawn(agent(C, "pc", "listen", "--count", "2",
                           "--on", "198.18.0.10:80=exec:cat > " + pc_video,
                           "--on", "198.18.0.10:6667=local:127.0.0.1:6667"),
                     stdout=subprocess.PIPE, text=True)
    wait_line(pc_agent, "agent pc.bob listening")
    say("   pc agent: listening for MTRs; video -> a player (stdin), chat -> the chat app on 127.0.0.1:6667")

    say("== Alice serves a %d MiB video (paced at %.0f Mbit/s) and a chat" % (VIDEO_BYTES >> 20, VIDEO_RATE * 8 / 1e6))
    video = os.path.join(WORK, "holiday.mp4")
    with open(video, "wb") as f:
        f.write(os.urandom(VIDEO_BYTES))
    want = hashlib.sha256(open(video, "rb").read()).hexdigest()
    samples_file = os.path.join(WORK, "samples")
    chat_log = os.path.join(WORK, "chat.log")
    # A capture on Alice's interface, in her namespace: the video's segments as her kernel sent
    # and received them (headers only).
    capture_file = os.path.join(WORK, "alice.pcap")
    sniffer = spawn(nsx(S, "tcpdump", "-i", "eth0", "-s", "128", "-U", "-w", capture_file, "-n",
                        "tcp port 8080"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_line(sniffer, "tcpdump: listening", stream="stderr")
    vsrv = spawn(nsx(S, "python3", "-c", VIDEO_SERVER, video, str(VIDEO_RATE), samples_file),
                 stdout=subprocess.PIPE, text=True)
    csrv = spawn(nsx(S, "python3", "-c", CHAT_SERVER, chat_log), stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    start = counters()

    say("== Bob's phone plays the video and chats through the VIP")
    phone_video = os.path.join(WORK, "phone-video.bin")
    stop = os.path.join(WORK, "stop-chatting")
    pv = spawn(nsx(P, "python3", "-c", PHONE_VIDEO, str(HANDOVER), phone_video), stdout=subprocess.PIPE, text=True)
    vport = wait_line(pv, "port")
    pchat = spawn(nsx(P, "python3", "-c", CHAT_CLIENT, "vip", "1", "100000", stop), stdout=subprocess.PIPE, text=True)
    cport = wait_line(pchat, "port")
    say("   video 198.18.0.1:%s -> 198.18.0.10:80, chat 198.18.0.1:%s -> 198.18.0.10:6667" % (vport, cport))
    wait_line(pv, "mark", timeout=60)
    open(stop, "w").close()
    said = int(wait_line(pchat, "said"))
    say("   Bob walks home after %d MiB of video and %d chat lines" % (HANDOVER >> 20, said - 1))
    pcchat = spawn(nsx(C, "python3", "-c", CHAT_CLIENT, "local", str(said), "20", os.path.join(WORK, "never")),
                   stdout=subprocess.PIPE, text=True)

    # The PC's round trip to the appliance: what its handshake with the migration port costs.
    pinged = subprocess.run(nsx(C, "ping", "-n", "-q", "-c", "10", "-i", "0.02", "198.18.0.10"),
                            capture_output=True, text=True).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", pinged)
    pc_rtt = float(m.group(1)) if m else None

    say("== the phone's agent moves both connections to the PC (tsmp-agent migrate PORT --to pc)")
    mv = spawn(agent(P, "phone", "migrate", vport, "--to", "pc"), stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, text=True)
    mc = spawn(agent(P, "phone", "migrate", cport, "--to", "pc"), stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, text=True)
    vout = []
    frozen_from = frozen_to = {}
    while True:
        line = mv.stdout.readline()
        if not line:
            break
        vout.append(line.rstrip())
        if " paused " in line:
            frozen_from = counters()
            time.sleep(FREEZE_CHECK)
            frozen_to = counters()
    cout = mc.stdout.read().splitlines()
    ok_v, ok_c = mv.wait() == 0, mc.wait() == 0
    for name, lines in (("video", vout), ("chat", cout)):
        say("   %s:" % name)
        for line in lines:
            say("     " + line)
    if not (ok_v and ok_c):
        raise SystemExit("a migration was refused (the agent's message is above); VERDICT: FAIL")

    say("== the PC plays on")
    vsrv_out = vsrv.stdout.read().strip()
    pcchat_out = pcchat.stdout.read().strip()
    pcchat_ok = pcchat.wait() == 0
    csrv.wait(timeout=10)
    pv_out = pv.stdout.read().strip()
    pv.wait()
    pc_agent.wait(timeout=30)
    for line in (pv_out, vsrv_out, "pc chat: " + pcchat_out.replace("\n", ", ")):
        for part in line.splitlines():
            say("   " + part)
    end = counters()
    samples = [list(map(float, l.split())) for l in open(samples_file).read().splitlines()]
    sniffer.terminate()
    sniffer.wait(timeout=5)
    capture = read_pcap(capture_file)
    after_info = samples[-1]

    say("== stopping the appliance (SIGTERM)")
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(timeout=15)
    log.close()
    text = open(log.name).read()
    for line in text.splitlines():
        if line.startswith(("mfr ", "mtr ", "migration ", "control:")) or re.match(r"^worker \d+ (proxy|migration)", line):
            say("   proxy | " + line)

    # --- verdict --------------------------------------------------------------------------
    t_mfr = next((float(m.group(1)) / 1000 for l in vout if (m := re.search(r"sent at (\d+) ms", l))), None)
    # phase -> (ms after the MFR on the proxy's slow path, the worker's clock in ms or None)
    steps = {}
    for l in vout:
        m = re.match(r"\s*([\d.]+) ms\s+(\w+)(?:.* t=([\d.]+)ms)?", l)
        if m:
            steps[m.group(2)] = (float(m.group(1)), float(m.group(3)) if m.group(3) else None)
    resume = next((int(m.group(1)) for l in vout if (m := re.search(r"resume_offset=(\d+)", l))), None)
    stream = b""
    if resume is not None:
        stream = open(phone_video, "rb").read()[:resume] + open(pc_video, "rb").read()
    body = stream.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in stream else b""
    got = hashlib.sha256(body).hexdigest()
    lines = open(chat_log).read().splitlines()
    chat_ok = lines == ["bob: %d still here" % n for n in range(1, said + 20)]
    frozen = moved(frozen_from, frozen_to, WATCHED)
    ever = moved(start, end, NEVER)
    _, _, zero, opened = freeze_seen(capture)
    # The server's socket when it was frozen (the last sample before the first zero-window ACK
    # in the capture): retransmissions before it are the phone link's loss; from it on, a
    # migration's.
    t_pause = zero if zero is not None else (
        t_mfr + steps["paused"][0] / 1000 if t_mfr and "paused" in steps else samples[-1][0])
    before_info = next((s for s in reversed(samples) if s[0] <= t_pause), samples[0])
    st_b, ca_b, cwnd_b, ssth_b, retr_b = map(int, before_info[2:7])
    st_a, ca_a, cwnd_a, ssth_a, retr_a = map(int, after_info[2:7])
    # Retransmissions from the capture (exact times); the socket's own count must agree: the
    # ones it made after its last sample before the freeze all came before the freeze.
    # The migration's window runs from the freeze to a second after the window reopened (the
    # replay and the splice settled, hundreds of round trips on these links); later segments
    # sent again are the PC path's own (on this 2-core host: tail-loss probes when the PC's
    # reader is late and its kernel delays an ACK), reported but not the migration's.
    again = retransmissions(capture)
    settled = (opened or zero or 0) + SETTLE_S
    after = ["%+.1f ms" % ((t - zero) * 1000) for t in again if zero is not None and zero <= t < settled]
    later = ["%+.1f ms" % ((t - zero) * 1000) for t in again if zero is not None and t >= settled]
    late = len([t for t in again if zero is not None and before_info[0] < t < zero])
    retrans_ok = zero is not None and not after and retr_a - retr_b == late + len(later)
    marks = [("MFR", t_mfr)] if t_mfr else []
    paused = steps.get("paused", (None, None))
    for phase in ("paused", "mtr_sent", "connected", "resumed"):
        if phase in steps and t_mfr:
            ms, wt = steps[phase]
            if wt is not None and paused[1] is not None and zero is not None:
                # The engine's steps on the worker's clock, anchored at the zero window Alice saw.
                marks.append((phase, zero + (wt - paused[1]) / 1000))
            else:
                marks.append((phase, t_mfr + ms / 1000))
    svg_plot(samples, capture, marks, PLOT)
    shutil.copy(capture_file, os.path.join(os.path.dirname(PLOT), "alice.pcap"))
    shutil.copy(samples_file, os.path.join(os.path.dirname(PLOT), "tcp_info.txt"))

    say("== timeline of the video's migration")
    say("   %-10s %14s %22s" % ("step", "after the MFR", "on the worker's clock"))
    say("   %-10s %11.1f ms %22s" % ("MFR", 0.0, "-"))
    for phase in ("paused", "mtr_sent", "connected", "replaying", "resumed"):
        if phase in steps:
            ms, wt = steps[phase]
            rel = "" if wt is None or paused[1] is None else "pause + %.1f ms" % (wt - paused[1])
            if wt is not None and paused[1] is not None:
                ms = paused[0] + wt - paused[1]
            say("   %-10s %11.1f ms %22s" % (phase, ms, rel))
    if paused[1] is not None and steps.get("resumed", (0, None))[1] is not None:
        pause_ms = steps["resumed"][1] - paused[1]
        say("   the server was frozen for %.1f ms; MFR to resumed %.1f ms (checks, naming server, MTR, "
            "the PC's handshake, cache flushed)" % (pause_ms, paused[0] + pause_ms))
    def worker_pause(lines):
        t = {m.group(1): float(m.group(2)) for l in lines if (m := re.search(r" (paused|resumed) t=([\d.]+)ms", l))}
        return t["resumed"] - t["paused"] if len(t) == 2 else None
    vp, cp = worker_pause(vout), worker_pause(cout)
    if vp is not None and cp is not None and pc_rtt:
        say("   pauses (worker's clock): video %.1f ms, chat %.1f ms; the PC's round trip to the appliance "
            "(ping): %.2f ms" % (vp, cp, pc_rtt))
    if zero is not None and opened is not None:
        say("   Alice's interface (capture in her namespace): zero window at %.1f ms after the MFR, "
            "reopened %.1f ms later" % ((zero - t_mfr) * 1000, (opened - zero) * 1000))
        say("   segments Alice sent again: %d before the freeze (the phone link's loss), %d from the "
            "freeze to %.0f s after the resume%s" % (len(again) - len(after) - len(later), len(after), SETTLE_S,
                                                   (": " + ", ".join(after)) if after else ""))
        if later:
            say("   and %d later on the PC's path, not the migration's (tail-loss probes after delayed "
                "ACKs): %s" % (len(later), ", ".join(later)))
    say("   links: " + "; ".join(link_counters()))
    say("== the server's side (its namespace, its socket)")
    say("   kernel counters moved while frozen %.1f s: %s" % (FREEZE_CHECK, ", ".join(frozen) or "none"))
    say("   kernel counters a migration must never move, over the whole run: %s" % (", ".join(ever) or "none"))
    ca = {0: "Open", 1: "Disorder", 2: "CWR", 3: "Recovery", 4: "Loss"}
    inf = lambda x: "infinite" if x >= 2**31 - 1 else str(x)
    say("   TCP_INFO (CUBIC) at the pause: state %d ca_state %s cwnd %d ssthresh %s total_retrans %d"
        % (st_b, ca.get(ca_b, ca_b), cwnd_b, inf(ssth_b), retr_b))
    say("   TCP_INFO (CUBIC) at the end:   state %d ca_state %s cwnd %d ssthresh %s total_retrans %d"
        % (st_a, ca.get(ca_a, ca_a), cwnd_a, inf(ssth_a), retr_a))
    say("   video: server sent sha256 %s" % want)
    say("          phone up to byte %s + PC after it, body sha256 %s" % (resume, got))
    say("   chat: the server heard lines 1..%d: %s" % (said + 19, "in order, none lost or doubled" if chat_ok else "NOT as said"))
    say("   plot: %s" % PLOT)
    passed = (ok_v and ok_c and pcchat_ok and got == want and chat_ok and not frozen and not ever
              and retrans_ok and ca_a == 0 and ssth_a >= ssth_b)
    if passed:
        say("== VERDICT: PASS (video and chat crossed devices intact; Alice's server did not notice: "
            "no retransmission or probe through the migration, no timeout, reset, challenge ACK or PAWS "
            "drop at all, congestion state Open, ssthresh not reduced)")
    else:
        say("== VERDICT: FAIL (agents %s/%s, pc chat %s, video %s, chat %s, frozen moved %s, ever moved %s, "
            "retrans %d->%d, ca_state %d, ssthresh %d->%d)"
            % (ok_v, ok_c, pcchat_ok, got == want, chat_ok, frozen, ever, retr_b, retr_a, ca_a, ssth_b, ssth_a))
        return 1
    return 0


# The applications by name, for `demo.py app NAME ARGS...` (vagrant/demo.sh runs them in the VMs,
# whose addresses are the ones above).
APPS = {"video-server": VIDEO_SERVER, "phone-video": PHONE_VIDEO, "chat-server": CHAT_SERVER,
        "chat-client": CHAT_CLIENT}

if __name__ == "__main__" and sys.argv[1:2] == ["app"]:
    if len(sys.argv) < 3 or sys.argv[2] not in APPS:
        sys.exit("usage: demo.py app {%s} ARGS..." % ",".join(sorted(APPS)))
    name = sys.argv[2]
    sys.argv = [name] + sys.argv[3:]
    exec(APPS[name], {"__name__": "__main__"})
elif __name__ == "__main__":
    code = 1
    try:
        code = main()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        code = 130
    except SystemExit as e:
        say("demo failed: %s" % e)
        code = 1
    finally:
        cleanup()
    sys.exit(code)
