//! `tsmp-linkem`: joins two interfaces (AF_PACKET on each) through a [`Shaper`] per
//! direction. Frames it sends out of an interface come back on that interface's packet socket
//! (as outgoing frames); each direction remembers what it sent and drops those echoes.
//!
//! ```text
//! tsmp-linkem --a lka0 --b lkb0 --a-to-b delay=20ms,rate=10mbit,loss=0.5% --b-to-a delay=20ms \
//!     --seed 7 --stats /tmp/link.json
//! ```

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use tsmp_linkem::{Counters, Shaper, Spec};

#[derive(Parser, Debug)]
#[command(
    name = "tsmp-linkem",
    about = "Emulates a link between two interfaces: delay, jitter, rate, loss, bursts, reordering, duplication, corruption",
    after_help = "SPEC: comma-separated key=value: delay=20ms jitter=2ms rate=10mbit queue=64kb loss=0.5% burst=1%:30% (enter:leave the lossy state) reorder=1%:5ms (held back that much longer) dup=0.1% corrupt=0.01% (one bit flipped beyond the Ethernet header)"
)]
struct Args {
    /// One interface.
    #[arg(long)]
    a: String,
    /// The other interface.
    #[arg(long)]
    b: String,
    /// What frames from A to B go through.
    #[arg(long = "a-to-b", default_value = "")]
    a_to_b: Spec,
    /// What frames from B to A go through.
    #[arg(long = "b-to-a", default_value = "")]
    b_to_a: Spec,
    /// Seed of the random decisions (each direction derives its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Writes both directions' counters here (JSON), twice a second and at exit.
    #[arg(long)]
    stats: Option<std::path::PathBuf>,
}

/// Hashes of frames sent out of one interface, not yet seen coming back on it.
type Echoes = Arc<Mutex<HashMap<u64, u32>>>;

fn hash(f: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    f.hash(&mut h);
    h.finish()
}

/// Both halves of an interface's packet socket.
type Halves = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

fn open(name: &str) -> Result<Halves, String> {
    let iface: NetworkInterface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("no interface `{name}` (create it first, e.g. a veth pair)"))?;
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(1)),
        read_buffer_size: 65_536,
        write_buffer_size: 65_536,
        ..pnet_datalink::Config::default()
    };
    match pnet_datalink::channel(&iface, cfg) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((tx, rx)),
        Ok(_) => Err(format!("`{name}`: not an Ethernet channel")),
        Err(e) => Err(format!(
            "`{name}`: cannot open a packet socket ({e}; run as root)"
        )),
    }
}

/// Moves frames from `rx` (interface `from`) through `shaper` to `tx`, until `stop`.
#[allow(clippy::too_many_arguments)]
fn direction(
    mut rx: Box<dyn DataLinkReceiver>,
    mut tx: Box<dyn DataLinkSender>,
    mut shaper: Shaper,
    seen_here: Echoes,
    sent_there: Echoes,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<(Counters, u64)>>,
    start: Instant,
) {
    let mut echoes = 0u64;
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed().as_micros() as u64;
        while let Some(f) = shaper.pop_due(now) {
            *sent_there.lock().unwrap().entry(hash(&f)).or_insert(0) += 1;
            let _ = tx.send_to(&f, None);
        }
        if let Ok(f) = rx.next() {
            let h = hash(f);
            let echo = {
                let mut m = seen_here.lock().unwrap();
                match m.get_mut(&h) {
                    Some(n) => {
                        *n -= 1;
                        if *n == 0 {
                            m.remove(&h);
                        }
                        true
                    }
                    None => false,
                }
            };
            if echo {
                echoes += 1;
            } else {
                let at = start.elapsed().as_micros() as u64;
                shaper.push(at, f.to_vec());
            }
        }
        if last_report.elapsed() > Duration::from_millis(100) {
            *out.lock().unwrap() = (shaper.counters, echoes);
            last_report = Instant::now();
        }
    }
    *out.lock().unwrap() = (shaper.counters, echoes);
}

fn write_stats(path: &std::path::Path, a: &Mutex<(Counters, u64)>, b: &Mutex<(Counters, u64)>) {
    let (ab, ea) = *a.lock().unwrap();
    let (ba, eb) = *b.lock().unwrap();
    let v = serde_json::json!({ "a_to_b": ab, "b_to_a": ba, "echoes": ea + eb });
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn main() {
    let args = Args::parse();
    let (txa, rxa) = open(&args.a).unwrap_or_else(|e| {
        eprintln!("tsmp-linkem: {e}");
        std::process::exit(2)
    });
    let (txb, rxb) = open(&args.b).unwrap_or_else(|e| {
        eprintln!("tsmp-linkem: {e}");
        std::process::exit(2)
    });
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("tsmp-linkem: cannot handle signal {sig}: {e}");
            std::process::exit(2);
        }
    }
    let (echo_a, echo_b): (Echoes, Echoes) = Default::default();
    let (out_ab, out_ba) = (
        Arc::new(Mutex::new((Counters::default(), 0))),
        Arc::new(Mutex::new((Counters::default(), 0))),
    );
    let start = Instant::now();
    let ab = {
        let (shaper, stop, out) = (
            Shaper::new(args.a_to_b.clone(), args.seed),
            Arc::clone(&stop),
            Arc::clone(&out_ab),
        );
        let (here, there) = (Arc::clone(&echo_a), Arc::clone(&echo_b));
        std::thread::spawn(move || direction(rxa, txb, shaper, here, there, stop, out, start))
    };
    let ba = {
        let (shaper, stop, out) = (
            Shaper::new(args.b_to_a.clone(), !args.seed),
            Arc::clone(&stop),
            Arc::clone(&out_ba),
        );
        let (here, there) = (Arc::clone(&echo_b), Arc::clone(&echo_a));
        std::thread::spawn(move || direction(rxb, txa, shaper, here, there, stop, out, start))
    };
    println!("tsmp-linkem: {} <-> {} ready", args.a, args.b);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(p) = &args.stats {
            write_stats(p, &out_ab, &out_ba);
        }
    }
    let _ = ab.join();
    let _ = ba.join();
    if let Some(p) = &args.stats {
        write_stats(p, &out_ab, &out_ba);
    }
    let (ab, _) = *out_ab.lock().unwrap();
    let (ba, _) = *out_ba.lock().unwrap();
    println!(
        "tsmp-linkem: stopped; {} -> {}: {ab:?}; {} -> {}: {ba:?}",
        args.a, args.b, args.b, args.a
    );
}
