# TRex ASTF profile: the stateful scenarios of `tsmp-pktgen bench` against the appliance on
# real NICs (TRex port 0 -> the appliance's client port, TRex port 1 -> its server port).
# Same addressing as the built-in generator (bench/pktgen/tcpgen.rs) and the appliance profile
# dpdk-config/bench-proxy-memif.toml with `vdev` replaced by the NICs' `pci`:
#   clients 198.18.128.0/17 -> VIP 198.18.0.10:80 -> [appliance, SNAT 198.19.0.100-169]
#   -> backend 198.19.0.2:8080 (TRex's server side)
# The client side connects to the VIP and the server side accepts by port (8080): the
# appliance's full NAT sits between the two, so the server side never sees the VIP.
#
#   ./t-rex-64 -i --astf -c 4
#   trex> start -f bench/hw/trex-astf-tsmp.py -m 1 -t size=64,flows=1000000,cps=200000
#
# Tunables (-t): size   data frame size on the wire: 64..1518 or imix (default 64)
#                flows  concurrent flows to hold (default 1000)
#                cps    new connections per second (flow set-up rate; default 100000)
#                seconds how long each flow streams (default 30)
# Scenarios: established-flow forwarding (size=64 / 1500, cps low, flows high), flow set-up
# rate (raise cps until `tsmp-cli stats` shows table_full or SYN drops), rate vs flows (flows
# 1000, 65536, 1000000, 4000000), overload (-m above the measured capacity; drops are the
# appliance's rx_missed and the drop counters in `tsmp-cli stats`). Migrations under load need
# a generator that plays the new device's handshake on the port the appliance names, which
# TRex cannot: run the built-in generator on the testbed's NICs for those (same addresses):
#   tsmp-pktgen gen --mode tcp --port-a <nic0> --port-b <nic1> --flows 65536 \
#       --migrate-percent 10 --control /tmp/tsmp.sock --duration 10 --progress
# with the appliance's control socket forwarded (ssh -L /tmp/tsmp.sock:/run/tsmp/tsmp.sock).
# Not run here (no NICs, no TRex on the development machine); kept consistent with tcpgen.rs.

from trex.astf.api import *  # noqa: F401,F403  (TRex's profile API)


IMIX = [(64, 7), (594, 4), (1518, 1)]


class Prof:
    def payloads(self, size):
        if size == "imix":
            return [(max(s - 58, 1), n) for s, n in IMIX]
        return [(max(int(size) - 58, 1), 1)]

    def get_profile(self, tunables, **kwargs):
        import argparse
        p = argparse.ArgumentParser(prog="trex-astf-tsmp")
        p.add_argument("--size", default="64")
        p.add_argument("--flows", type=int, default=1000)
        p.add_argument("--cps", type=float, default=100000)
        p.add_argument("--seconds", type=float, default=30)
        a = p.parse_args(tunables)

        ip_gen = ASTFIPGen(
            glob=ASTFIPGenGlobal(ip_offset="0.0.0.1"),
            dist_client=ASTFIPGenDist(ip_range=["198.18.128.0", "198.18.255.255"], distribution="seq"),
            dist_server=ASTFIPGenDist(ip_range=["198.18.0.10", "198.18.0.10"], distribution="seq"),
        )
        templates = []
        for plen, weight in self.payloads(a.size):
            # The server streams segments of `plen` bytes for `seconds`; the client ACKs (its
            # TCP stack), as in the built-in generator's download direction.
            seg = b"x" * plen
            rounds = max(int(a.seconds * 1000), 1)
            client = ASTFProgram()
            client.send(b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n")
            client.recv(plen * rounds)
            server = ASTFProgram()
            server.recv(1)
            server.set_var("n", rounds)
            server.set_label("loop:")
            server.send(seg)
            server.delay(1000)  # us between segments per flow: flows x 1000/s segments
            server.jmp_nz("n", "loop:")
            cps = a.cps * weight / sum(w for _, w in self.payloads(a.size))
            templates.append(ASTFTemplate(
                client_template=ASTFTCPClientTemplate(program=client, ip_gen=ip_gen, port=80, cps=cps),
                server_template=ASTFTCPServerTemplate(program=server, assoc=ASTFAssociationRule(port=8080)),
            ))
        glob = ASTFGlobalInfo()
        glob.tcp.mss = 1460
        glob.tcp.initwnd = 10
        return ASTFProfile(default_ip_gen=ip_gen, templates=templates, default_c_glob_info=glob)


def register():
    return Prof()
