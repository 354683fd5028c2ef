//! The virtio path the Vagrant VMs use, exercised where no VM can run: the appliance's data
//! ports on DPDK's virtio PMD (`net_virtio_user`, the same driver as a virtio-net PCI NIC,
//! over vhost-user), connected to `net_vhost` ports of a second DPDK process (`dpdk-testpmd`
//! in io mode) that plays the network: it bridges each vhost port to an af_packet port on a
//! veth whose other end is in a namespace running the kernel's TCP. Real flows go through the
//! proxy over virtio, checked by SHA-256 in the receiving application. This kernel has no
//! /dev/vhost-net; virtio_user needs `--single-file-segments` to share its memory.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run, Netns, Proxy, TempDir, Veth, SEED_SERVER};

/// The process playing the network; killed on drop.
struct Network(Child);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flows_cross_the_proxy_on_virtio_user_ports() {
    common::require_root();
    let t = common::tag();
    let dir = TempDir::new(&format!("virtio-{t}"));
    let client = Netns::new(&format!("tsmpt-vc{t}"));
    let server = Netns::new(&format!("tsmpt-vs{t}"));
    let vc = Veth::new(&format!("tvc{t}"), &client, "198.18.0.1/24");
    let vs = Veth::new(&format!("tvs{t}"), &server, "198.19.0.2/24");
    let sock_c = dir.0.join("vhost-client.sock");
    let sock_s = dir.0.join("vhost-server.sock");

    // The network: vhost-user servers for the appliance's two ports, each bridged (io
    // forwarding pairs ports 0-1 and 2-3) to the host end of a namespace's veth.
    let mut net = Network(
        Command::new("dpdk-testpmd")
            .args([
                "-l",
                "0,1",
                "--no-pci",
                "--single-file-segments",
                "-m",
                "256",
            ])
            .arg(format!("--file-prefix=tsmpt-net{t}"))
            .arg(format!(
                "--vdev=net_vhost0,iface={},queues=1",
                sock_c.display()
            ))
            .arg(format!("--vdev=net_af_packet0,iface={}", vc.host))
            .arg(format!(
                "--vdev=net_vhost1,iface={},queues=1",
                sock_s.display()
            ))
            .arg(format!("--vdev=net_af_packet1,iface={}", vs.host))
            // A stats period keeps it forwarding; without one it waits for a key on stdin.
            .args([
                "--",
                "--forward-mode=io",
                "--auto-start",
                "--stats-period=3600",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("network.log")).unwrap())
            .stderr(std::fs::File::create(dir.0.join("network.err")).unwrap())
            .spawn()
            .expect("dpdk-testpmd (the dpdk package)"),
    );
    // Ready: both vhost-user sockets exist and (its output is block-buffered in a file) the
    // forwarding line is there, or a few seconds have passed since the sockets appeared.
    let log = dir.0.join("network.log");
    let until = Instant::now() + Duration::from_secs(30);
    let mut sockets_at = None;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if sock_c.exists() && sock_s.exists() {
            let at = *sockets_at.get_or_insert_with(Instant::now);
            if text.contains("packet forwarding - ports=") || at.elapsed() > Duration::from_secs(3)
            {
                break;
            }
        }
        assert!(
            Instant::now() < until && net.0.try_wait().ok().flatten().is_none(),
            "dpdk-testpmd did not start forwarding ({:?}):\n{text}{}",
            net.0.try_wait(),
            std::fs::read_to_string(dir.0.join("network.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The appliance on virtio_user ports.
    let cfg = dir.0.join("proxy.toml");
    let text = common::profile(
        "default.toml",
        &[
            (
                "net_af_packet0,iface=tsmp-c0,qpairs=1,blocksz=4096,framesz=2048,framecnt=4096",
                &format!("net_virtio_user0,path={},queues=1", sock_c.display()),
            ),
            (
                "net_af_packet1,iface=tsmp-s0,qpairs=1,blocksz=4096,framesz=2048,framecnt=4096",
                &format!("net_virtio_user1,path={},queues=1", sock_s.display()),
            ),
            (
                "file_prefix = \"tsmp\"",
                &format!("file_prefix = \"tsmpt-v{t}\""),
            ),
            (
                "memory_mb = 256",
                "memory_mb = 256\nextra_args = [\"--single-file-segments\"]",
            ),
        ],
    ) + &format!(
        "\n[control]\ncli_socket = \"{}\"\n",
        dir.0.join("tsmp.sock").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let stats = dir.0.join("stats.json");
    let proxy = Proxy::start(&cfg, &["--stats-json", stats.to_str().unwrap()]);

    let mut srv = server.spawn(&["python3", "-c", SEED_SERVER, "198.19.0.2", "8080"]);
    std::thread::sleep(Duration::from_millis(300));
    let args = common::seed_client_args("198.18.0.10", 80, 20, 1 << 20);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = client.exec(&refs);
    let said = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let _ = srv.kill();
    let _ = srv.wait();
    let log = proxy.stop();
    assert_eq!(said, "ok 20", "20 downloads over virtio:\n{log}");
    assert!(
        log.contains("driver=net_virtio_user"),
        "the ports are virtio:\n{log}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["proxy"][0]["flows_created"], 20, "{s:#}");
    let rx: u64 = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rx_packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        rx > 20 * 700,
        "frames through the virtio ports: {rx}\n{s:#}"
    );
    drop(net);
    let _ = run(
        "rm",
        &["-f", sock_c.to_str().unwrap(), sock_s.to_str().unwrap()],
    );
}
