//! `tsmp-names`: the TSMP naming server (TSMPS), an authoritative DNS server for the devices'
//! zone.
//!
//! ```text
//! tsmp-names --dir DIR --zone tsmp.test add-user bob     # prints bob's TSIG key once
//! tsmp-names --dir DIR --zone tsmp.test serve --listen 198.18.0.254:53
//! ```
//!
//! hickory-server serves the zone from SQLite (the zone file written on first start, then the
//! journal of every accepted update), so records survive restarts. In front of it a policy:
//! every UPDATE must be signed (TSIG, hmac-sha256) with a user's key, may change only names
//! strictly below `<user>.<zone>`, and is accepted once (the MACs of accepted updates are kept,
//! in SQLite, for twice the TSIG fudge: TSIG alone accepts a replay within 300 s). Zone
//! transfers are refused to everyone. Queries are plain DNS: `dig @SERVER phone.bob.tsmp.test`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_server::proto::rr::{LowerName, Name, RecordType, TSigner};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::sqlite::{SqliteConfig, SqliteZoneHandler, TsigKeyConfig};
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, UpdateRequest, ZoneType,
};
use tsmp_proto::names::{check_label, zone, TsigKey, FUDGE};

#[derive(Debug, Parser)]
#[command(
    name = "tsmp-names",
    version,
    about = "TSMP naming server (authoritative DNS with per-user dynamic updates)"
)]
struct Args {
    /// State directory: zone file, SQLite journal, users' keys.
    #[arg(long, default_value = "/var/lib/tsmp-names")]
    dir: PathBuf,
    /// The zone served.
    #[arg(long, default_value = "tsmp.test")]
    zone: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a user and print its TSIG key (give it to the user's devices).
    AddUser {
        /// The user's name (one DNS label).
        user: String,
    },
    /// Serve the zone over UDP and TCP.
    Serve {
        /// Address and port to listen on (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:53")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match &args.cmd {
        Cmd::AddUser { user } => add_user(&args, user),
        Cmd::Serve { listen } => serve(&args, *listen),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsmp-names: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys_dir(dir: &Path) -> PathBuf {
    dir.join("keys")
}

fn add_user(args: &Args, user: &str) -> Result<(), String> {
    check_label("user", user).map_err(|e| e.to_string())?;
    let kd = keys_dir(&args.dir);
    std::fs::create_dir_all(&kd).map_err(|e| format!("cannot create {}: {e}", kd.display()))?;
    let path = kd.join(format!("{user}.key"));
    if path.exists() {
        return Err(format!(
            "user {user} exists ({}); remove that file to issue a new key",
            path.display()
        ));
    }
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no system randomness: {e}"))?;
    let key = TsigKey {
        name: user.to_owned(),
        secret,
    };
    write_private(&path, &key.to_string())?;
    println!("{key}");
    eprintln!(
        "user {user} added; restart `tsmp-names serve` to load the key; the devices of {user} \
         register with: tsmp-agent register --tsig '{key}' ..."
    );
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(f, "{text}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn load_keys(dir: &Path) -> Result<HashMap<Name, (String, TSigner)>, String> {
    let mut out = HashMap::new();
    let kd = keys_dir(dir);
    let Ok(entries) = std::fs::read_dir(&kd) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("key") {
            continue;
        }
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let key: TsigKey = text.parse().map_err(|e| format!("{}: {e}", p.display()))?;
        let signer = key.signer().map_err(|e| format!("{}: {e}", p.display()))?;
        // hickory reads the raw secret from a file of its own.
        let raw = p.with_extension("bin");
        std::fs::write(&raw, &key.secret)
            .and_then(|()| {
                std::fs::set_permissions(&raw, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            })
            .map_err(|e| format!("cannot write {}: {e}", raw.display()))?;
        out.insert(signer.signer_name().clone(), (key.name.clone(), signer));
    }
    Ok(out)
}

/// Counters of the policy's decisions, printed at exit and every minute when they change.
#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    updates_accepted: AtomicU64,
    refused_unsigned: AtomicU64,
    refused_unknown_key: AtomicU64,
    refused_bad_signature: AtomicU64,
    refused_stale: AtomicU64,
    refused_replay: AtomicU64,
    refused_outside_user: AtomicU64,
    refused_transfer: AtomicU64,
}

impl Counters {
    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "queries={} updates accepted={} refused: unsigned={} unknown_key={} bad_signature={} stale={} replay={} outside_user={} transfer={}",
            g(&self.queries),
            g(&self.updates_accepted),
            g(&self.refused_unsigned),
            g(&self.refused_unknown_key),
            g(&self.refused_bad_signature),
            g(&self.refused_stale),
            g(&self.refused_replay),
            g(&self.refused_outside_user),
            g(&self.refused_transfer)
        )
    }
}

/// MACs of accepted updates, persisted so that a restart does not reopen the replay window.
struct ReplayLog {
    db: rusqlite::Connection,
}

impl ReplayLog {
    fn open(path: &Path) -> Result<Self, String> {
        let db = rusqlite::Connection::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS seen (mac BLOB PRIMARY KEY, expires INTEGER NOT NULL);",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ReplayLog { db })
    }

    /// Records `mac`; false when it was seen before (a replay).
    fn first_use(&self, mac: &[u8], now: u64) -> bool {
        let expires = i64::try_from(now + 2 * u64::from(FUDGE)).unwrap_or(i64::MAX);
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let _ = self
            .db
            .execute("DELETE FROM seen WHERE expires < ?1", [now]);
        matches!(
            self.db.execute(
                "INSERT INTO seen (mac, expires) VALUES (?1, ?2)",
                rusqlite::params![mac, expires],
            ),
            Ok(1)
        )
    }
}

struct Policy {
    catalog: Catalog,
    zone: LowerName,
    keys: HashMap<Name, (String, TSigner)>,
    replay: Mutex<ReplayLog>,
    counters: Arc<Counters>,
}

enum Verdict {
    Pass,
    Refuse(ResponseCode, &'static str),
}

impl Policy {
    fn check_update(&self, request: &Request, now: u64) -> Verdict {
        let c = &self.counters;
        let bump = |a: &AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        let Some(tsig) = request.signature.as_ref() else {
            bump(&c.refused_unsigned);
            return Verdict::Refuse(ResponseCode::Refused, "unsigned update");
        };
        let Some((user, signer)) = self.keys.get(&tsig.name) else {
            bump(&c.refused_unknown_key);
            return Verdict::Refuse(ResponseCode::NotAuth, "unknown key");
        };
        let Ok((mac, _, range)) = signer.verify_message_byte(request.as_slice(), None, true) else {
            bump(&c.refused_bad_signature);
            return Verdict::Refuse(ResponseCode::NotAuth, "bad signature");
        };
        if !range.contains(&now) {
            bump(&c.refused_stale);
            return Verdict::Refuse(ResponseCode::NotAuth, "signature time out of range");
        }
        // The user's subtree: names strictly below <user>.<zone>.
        let Ok(own) = Name::from_str(user).and_then(|n| n.append_domain(&Name::from(&self.zone)))
        else {
            bump(&c.refused_outside_user);
            return Verdict::Refuse(ResponseCode::Refused, "bad user name");
        };
        let own = LowerName::from(own);
        let zone_ok = request
            .queries
            .queries()
            .iter()
            .all(|q| q.name() == &self.zone);
        let names_ok = request
            .updates()
            .iter()
            .chain(request.prerequisites().iter())
            .all(|r| {
                let n = LowerName::from(&r.name);
                own.zone_of(&n) && n != own
            });
        if !zone_ok || !names_ok {
            bump(&c.refused_outside_user);
            return Verdict::Refuse(ResponseCode::Refused, "name outside the user's subtree");
        }
        let fresh = self
            .replay
            .lock()
            .map(|r| r.first_use(&mac, now))
            .unwrap_or(false);
        if !fresh {
            bump(&c.refused_replay);
            return Verdict::Refuse(ResponseCode::Refused, "replayed update");
        }
        Verdict::Pass
    }
}

#[async_trait::async_trait]
impl RequestHandler for Policy {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let verdict = if request.metadata.op_code == OpCode::Update {
            self.check_update(request, T::current_time())
        } else if request
            .queries
            .queries()
            .iter()
            .any(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR))
        {
            self.counters
                .refused_transfer
                .fetch_add(1, Ordering::Relaxed);
            Verdict::Refuse(ResponseCode::Refused, "zone transfer")
        } else {
            self.counters.queries.fetch_add(1, Ordering::Relaxed);
            Verdict::Pass
        };
        match verdict {
            Verdict::Pass => {
                let info = self
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
                if request.metadata.op_code == OpCode::Update
                    && info.response_code == ResponseCode::NoError
                {
                    self.counters
                        .updates_accepted
                        .fetch_add(1, Ordering::Relaxed);
                }
                info
            }
            Verdict::Refuse(code, why) => {
                eprintln!(
                    "tsmp-names: refused {:?} from {}: {why}",
                    request.metadata.op_code,
                    request.src()
                );
                let resp = MessageResponseBuilder::new(&request.queries, None)
                    .error_msg(&request.metadata, code);
                match response_handle.send_response(resp).await {
                    Ok(i) => i,
                    Err(_) => ResponseInfo::from(Header {
                        metadata: request.metadata,
                        counts: HeaderCounts::default(),
                    }),
                }
            }
        }
    }
}

fn serve(args: &Args, listen: std::net::SocketAddr) -> Result<(), String> {
    let origin = zone(&args.zone).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let zone_file = args.dir.join("zone.txt");
    if !zone_file.exists() {
        std::fs::write(
            &zone_file,
            format!(
                "$ORIGIN {origin}\n$TTL 30\n@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 30\n@ IN NS ns.{origin}\n"
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", zone_file.display()))?;
    }
    let keys = load_keys(&args.dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let config = SqliteConfig {
            zone_path: zone_file.clone(),
            journal_path: args.dir.join("zone.sqlite"),
            allow_update: true,
            tsig_keys: keys
                .iter()
                .map(|(n, (u, _))| TsigKeyConfig {
                    name: n.to_string(),
                    key_file: keys_dir(&args.dir).join(format!("{u}.bin")),
                    algorithm: TsigAlgorithm::HmacSha256,
                    fudge: FUDGE,
                })
                .collect(),
        };
        let handler = SqliteZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::try_from_config(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            false,
            None,
            &config,
            None,
        )
        .await
        .map_err(|e| format!("zone {origin}: {e}"))?;
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(&origin), vec![Arc::new(handler)]);
        let counters = Arc::new(Counters::default());
        let policy = Policy {
            catalog,
            zone: LowerName::from(&origin),
            keys,
            replay: Mutex::new(ReplayLog::open(&args.dir.join("replay.sqlite"))?),
            counters: counters.clone(),
        };
        let users: Vec<&str> = policy.keys.values().map(|(u, _)| u.as_str()).collect();
        println!(
            "tsmp-names: zone {origin} on {listen} (udp, tcp), state {}, users: {}",
            args.dir.display(),
            if users.is_empty() { "none (add-user)".to_owned() } else { users.join(", ") }
        );
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on udp {listen}: {e}"))?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on tcp {listen}: {e}"))?;
        let mut server = hickory_server::Server::new(policy);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            r = server.block_until_done() => r.map_err(|e| e.to_string())?,
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        println!("tsmp-names: stopping; {}", counters.line());
        Ok::<(), String>(())
    })
}
