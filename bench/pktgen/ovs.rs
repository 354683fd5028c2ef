//! Open vSwitch with the DPDK datapath as a forwarder on the memif harness, doing what the
//! proxy does with conntrack: clients -> VIP 198.18.0.10:80 become SNAT address:port ->
//! backend 198.19.0.2:8080, and back.
//!
//! Run by hand from the work directory, never as a system service: a private ovsdb-server and
//! ovs-vswitchd-dpdk (Debian's openvswitch-switch-dpdk) with their database, sockets, pid files
//! and logs under `<dir>/ovs`, stopped and removed afterwards ([`Ovs`]'s drop). One PMD thread
//! on lcore 1, the main thread on lcore 0, like the other forwarders.
//!
//! The pipeline (OpenFlow tables):
//! - 0: ARP for the forwarder's addresses answered in place (198.18.0.254 on A, 198.19.0.254 on
//!   B); TCP to the VIP -> conntrack zone 1 with NAT (table 1); TCP from the backend ->
//!   conntrack zone 2 with NAT (table 3);
//! - 1: new -> commit in zone 1 with DNAT to the backend (table 2); established -> table 2;
//! - 2: -> conntrack zone 2 with NAT (table 4);
//! - 4: new -> commit in zone 2 with SNAT to 198.19.0.100-169:1024-65535; out on B;
//! - 3 (replies): established -> zone 1 with NAT (table 5), which undoes the DNAT; out on A.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Res;

const VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// The OpenFlow rules (ports: 1 = A, clients; 2 = B, backend).
const FLOWS: &str = "\
table=0,priority=100,arp,in_port=1,arp_op=1,arp_tpa=198.18.0.254,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:02:00:00:00:00:fe,load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:0x0200000000fe->NXM_NX_ARP_SHA[],load:0xc61200fe->NXM_OF_ARP_SPA[],in_port
table=0,priority=100,arp,in_port=2,arp_op=1,arp_tpa=198.19.0.254,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:02:00:00:00:01:fe,load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:0x0200000001fe->NXM_NX_ARP_SHA[],load:0xc61300fe->NXM_OF_ARP_SPA[],in_port
table=0,priority=10,tcp,in_port=1,nw_dst=198.18.0.10,tp_dst=80,actions=ct(zone=1,nat,table=1)
table=0,priority=10,tcp,in_port=2,nw_src=198.19.0.2,tp_src=8080,actions=ct(zone=2,nat,table=3)
table=0,priority=0,actions=drop
table=1,priority=10,ct_state=+new+trk,tcp,actions=ct(commit,zone=1,nat(dst=198.19.0.2:8080),table=2)
table=1,priority=10,ct_state=+est+trk,tcp,actions=resubmit(,2)
table=1,priority=0,actions=drop
table=2,priority=10,tcp,actions=ct(zone=2,nat,table=4)
table=4,priority=10,ct_state=+new+trk,tcp,actions=ct(commit,zone=2,nat(src=198.19.0.100-198.19.0.169:1024-65535)),mod_dl_src:02:00:00:00:01:fe,mod_dl_dst:02:00:00:00:00:02,output:2
table=4,priority=10,ct_state=+est+trk,tcp,actions=mod_dl_src:02:00:00:00:01:fe,mod_dl_dst:02:00:00:00:00:02,output:2
table=4,priority=0,actions=drop
table=3,priority=10,ct_state=+est+trk,tcp,actions=ct(zone=1,nat,table=5)
table=3,priority=0,actions=drop
table=5,priority=10,ct_state=+est+trk,tcp,actions=mod_dl_src:02:00:00:00:00:fe,mod_dl_dst:02:00:00:00:00:01,output:1
table=5,priority=0,actions=drop
";

/// Whether Debian's DPDK build of Open vSwitch is installed.
pub fn available() -> bool {
    Path::new(VSWITCHD).exists() && Path::new(SCHEMA).exists()
}

/// A private Open vSwitch instance (its database server; the switch is the harness's child).
#[derive(Debug)]
pub struct Ovs {
    dir: PathBuf,
    db: Option<Child>,
}

impl Ovs {
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        for k in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(k, &self.dir);
        }
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> Res<String> {
        let out = self
            .cmd(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!("cannot run {prog}: {e} (apt-get install openvswitch-switch-dpdk)")
            })?;
        if !out.status.success() {
            return Err(format!(
                "{prog} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the database, starts its server, configures DPDK, the bridge and the two memif
    /// ports (clients of the generator's sockets `<dir>/a.sock`, `<dir>/b.sock`), and starts
    /// ovs-vswitchd-dpdk as a child writing to `out` and `err`; returns once the flows are
    /// installed.
    pub fn start(
        work: &Path,
        (out, err): (std::fs::File, std::fs::File),
        no_huge: bool,
    ) -> Res<(Ovs, Child)> {
        if !available() {
            return Err(format!(
                "{VSWITCHD} not found: apt-get install openvswitch-switch-dpdk"
            ));
        }
        let dir = work.join("ovs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut o = Ovs { dir, db: None };
        let p = |n: &str| o.dir.join(n).display().to_string();
        o.run("ovsdb-tool", &["create", &p("conf.db"), SCHEMA])?;
        // Our child, not a daemon: stopped and reaped in drop.
        let db = o
            .cmd("ovsdb-server")
            .arg(format!("--remote=punix:{}", p("db.sock")))
            .arg(format!("--log-file={}", p("ovsdb-server.log")))
            .arg(p("conf.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start ovsdb-server: {e} (apt-get install openvswitch-switch-dpdk)")
            })?;
        let sock = o.dir.join("db.sock");
        o.db = Some(db);
        let t = Instant::now();
        while !sock.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "ovsdb-server did not open {} within 10 s",
                    sock.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let db = format!("--db=unix:{}", p("db.sock"));
        o.run("ovs-vsctl", &[&db, "--no-wait", "init"])?;
        let mem = if no_huge {
            "--no-pci --no-huge -m 512"
        } else {
            "--no-pci"
        };
        let memif = |i: u8| {
            format!(
                "options:dpdk-devargs=net_memif{i},role=client,id=0,socket={},socket-abstract=no",
                work.join(if i == 0 { "a.sock" } else { "b.sock" })
                    .display()
            )
        };
        let extra = format!("other_config:dpdk-extra={mem} --file-prefix=tsmp-bench-ovs");
        let (ma, mb) = (memif(0), memif(1));
        let mut args = vec![
            db.as_str(),
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            "other_config:dpdk-lcore-mask=0x1",
            "other_config:pmd-cpu-mask=0x2",
            extra.as_str(),
        ];
        if !no_huge {
            args.push("other_config:dpdk-socket-mem=512");
        }
        args.extend([
            "--",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br0",
            "a",
            "--",
            "set",
            "Interface",
            "a",
            "type=dpdk",
            "ofport_request=1",
            ma.as_str(),
            "--",
            "add-port",
            "br0",
            "b",
            "--",
            "set",
            "Interface",
            "b",
            "type=dpdk",
            "ofport_request=2",
            mb.as_str(),
        ]);
        o.run("ovs-vsctl", &args)?;
        let child = o
            .cmd(VSWITCHD)
            .arg(format!("unix:{}", p("db.sock")))
            .arg(format!("--pidfile={}", p("ovs-vswitchd.pid")))
            .arg(format!("--log-file={}", p("ovs-vswitchd.log")))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {VSWITCHD}: {e}"))?;
        match o.install_flows() {
            Ok(()) => Ok((o, child)),
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Waits for the bridge (its management socket appears once DPDK is up and the bridge
    /// exists), then installs [`FLOWS`].
    fn install_flows(&self) -> Res<()> {
        let t = Instant::now();
        while !self.dir.join("br0.mgmt").exists() {
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "ovs-vswitchd-dpdk did not create br0 within 60 s; log: {}",
                    self.dir.join("ovs-vswitchd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let flows = self.dir.join("flows.txt");
        std::fs::write(&flows, FLOWS).map_err(|e| e.to_string())?;
        self.run(
            "ovs-ofctl",
            &["add-flows", "br0", &flows.display().to_string()],
        )?;
        Ok(())
    }

    /// The PMD thread's processing cycles per packet (`dpif-netdev/pmd-stats-show`).
    pub fn cycles_per_packet(&self) -> f64 {
        self.appctl("dpif-netdev/pmd-stats-show")
            .and_then(|out| {
                out.lines()
                    .find_map(|l| l.trim().strip_prefix("avg processing cycles per packet:"))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(f64::NAN)
    }

    /// Conntrack entries (`dpctl/ct-get-nconns`), to check the NAT saw the flows.
    pub fn conntrack_entries(&self) -> usize {
        self.appctl("dpctl/ct-get-nconns")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The running switch's answer to an `ovs-appctl` command (through its control socket,
    /// named by its pid); `None` when it cannot be asked.
    fn appctl(&self, command: &str) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.join("ovs-vswitchd.pid")).ok()?;
        let ctl = self
            .dir
            .join(format!("ovs-vswitchd-dpdk.{}.ctl", pid.trim()));
        self.run("ovs-appctl", &["-t", &ctl.display().to_string(), command])
            .ok()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // The switch is the harness's child (stopped there); the database server is ours.
        if let Some(mut db) = self.db.take() {
            let _ = db.kill();
            let _ = db.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
