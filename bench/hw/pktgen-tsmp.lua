-- Pktgen-DPDK script: the stateless scenarios against the appliance on real NICs
-- (Pktgen port 0 -> the appliance's client port, port 1 -> its server port), with the same
-- addresses as the built-in generator (bench/pktgen/tcpgen.rs) and
-- dpdk-config/bench-proxy-memif.toml (its `vdev` lines replaced by the NICs' `pci`).
--
--   pktgen -l 0-4 -n 4 -a <nic0> -a <nic1> -- -P -m "[1:2].0,[3:4].1" -f bench/hw/pktgen-tsmp.lua
--
-- Pktgen has no TCP state: it cannot complete handshakes, so established-flow forwarding,
-- latency through established flows and migrations under load need a stateful generator
-- (TRex ASTF on hardware: bench/hw/trex-astf-tsmp.py; or the built-in one on the NICs,
-- `tsmp-pktgen gen --mode tcp --port-a <nic0> --port-b <nic1> ...`, which also injects
-- migrations through the appliance's control socket). What it measures:
--   setup  flow set-up rate: SYNs from a range of client tuples to the VIP on port 0; every
--          SYN the appliance accepts leaves port 1 toward the backend, so port 1's rx rate is
--          the set-up rate (the backend does not answer: flows stay half-open and expire after
--          [limits] timeout_syn_s; size the table for rate x timeout).
--   flood  overload: the same at line rate; the appliance must keep forwarding its
--          established flows while counting table_full / rx_missed (`tsmp-cli stats`).
--   pass   pass-through forwarding at 64 B and 1500 B, for the appliance in
--          `mode = "passthrough"` (the `tsmp-pktgen compare` scenario).
-- Not run here (no NICs, no Pktgen-DPDK on the development machine).

package.path = package.path .. ";?.lua;test/?.lua;app/?.lua;"
require "Pktgen"

local scenario = os.getenv("TSMP_SCENARIO") or "setup"
local seconds = tonumber(os.getenv("TSMP_SECONDS") or "10")
local rate = tonumber(os.getenv("TSMP_RATE") or "10")   -- percent of line rate

local function common(size)
    pktgen.set("0", "size", size)
    pktgen.set_proto("0", "tcp")
    pktgen.set_ipaddr("0", "dst", "198.18.0.10")
    pktgen.set_ipaddr("0", "src", "198.18.128.1/17")
end

local function tuples(flows)
    -- Client addresses 198.18.128.0 upward, ports 2000..61999: flow i as in tcpgen.rs.
    pktgen.range.dst_ip("0", "start", "198.18.0.10")
    pktgen.range.dst_ip("0", "inc", "0.0.0.0")
    pktgen.range.src_ip("0", "start", "198.18.128.0")
    pktgen.range.src_ip("0", "inc", "0.0.0.1")
    pktgen.range.src_ip("0", "min", "198.18.128.0")
    pktgen.range.src_ip("0", "max", string.format("198.18.%d.%d", 128 + math.floor(flows / 60000 / 256), math.floor(flows / 60000) % 256))
    pktgen.range.src_port("0", "start", 2000)
    pktgen.range.src_port("0", "inc", 1)
    pktgen.range.src_port("0", "min", 2000)
    pktgen.range.src_port("0", "max", 61999)
    pktgen.range.dst_port("0", "start", 80)
    pktgen.range.dst_port("0", "inc", 0)
    pktgen.range.tcp_flags("0", "syn")
    pktgen.set_range("0", "on")
end

local function run(label)
    pktgen.clr()
    pktgen.start("0")
    pktgen.delay(seconds * 1000)
    pktgen.stop("0")
    pktgen.delay(500)
    local s = pktgen.portStats("all", "port")
    local rx1, tx0 = s[1].ipackets, s[0].opackets
    printf("%s: sent %d on port 0, %d left the appliance on port 1: %.3f Mpps through\n",
        label, tx0, rx1, rx1 / seconds / 1e6)
end

if scenario == "setup" or scenario == "flood" then
    common(64)
    tuples(4000000)
    pktgen.set("0", "rate", scenario == "flood" and 100 or rate)
    run(scenario)
elseif scenario == "pass" then
    for _, size in ipairs({64, 1500}) do
        common(size)
        pktgen.set("0", "rate", 100)
        run("pass-through " .. size .. " B")
    end
else
    printf("TSMP_SCENARIO=%s: use setup, flood or pass\n", scenario)
end
