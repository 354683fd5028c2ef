//! The naming service (TSMPS) as standard DNS: how a device is published, and the client side
//! that the agent and the proxy use (queries, and RFC 2136 updates signed with TSIG).
//!
//! Device `phone` of user `bob` in zone `tsmp.test.`:
//!
//! ```text
//! phone.bob.tsmp.test.                   A    198.18.0.1
//! phone.bob.tsmp.test.                   TXT  "tsmp-key=ed25519:<base64 public key>"
//! _tsmp-agent._tcp.phone.bob.tsmp.test.  SRV  0 0 7001 phone.bob.tsmp.test.
//! ```
//!
//! User `bob` holds the TSIG key named `bob` (hmac-sha256); the naming server lets that key
//! change only names strictly below `bob.<zone>`. Any DNS server with an equivalent policy
//! (BIND's `update-policy { grant bob subdomain bob.tsmp.test. ANY; }`) serves the same data.
//!
//! Invariants: every name this module builds is made of validated labels (lowercase letters,
//! digits, `-`; at most 63 bytes), so a user or device name can never address another user's
//! subtree; a record set is read only from answers whose ID and question match the query.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

/// The label of the agent's SRV record: `_tsmp-agent._tcp.<device>.<user>.<zone>`.
pub const SRV_PREFIX: &str = "_tsmp-agent._tcp";
/// The prefix of the device key's TXT string.
pub const KEY_PREFIX: &str = "tsmp-key=ed25519:";
/// TTL of published records (seconds): short, devices move.
pub const TTL: u32 = 30;
/// TSIG fudge (seconds), RFC 8945's recommendation.
pub const FUDGE: u16 = 300;

/// A naming-service failure, worded for the operator or the user.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// A user, device or zone name that is not a valid DNS label.
    #[error("{0}")]
    BadName(String),
    /// The naming server did not answer.
    #[error("naming server {0} did not answer (is tsmp-names running and reachable?)")]
    Timeout(SocketAddr),
    /// A socket error.
    #[error("naming server {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The name has no such record.
    #[error("{0} is not registered (run `tsmp-agent register` on that device)")]
    NotFound(String),
    /// A record exists but is not what a device publishes.
    #[error("{0}: {1}")]
    Malformed(String, String),
    /// The server refused or failed a request.
    #[error("naming server answered {code} to the update of {name}: {why}")]
    Refused {
        /// The name updated.
        name: String,
        /// The DNS response code.
        code: String,
        /// What it means here.
        why: String,
    },
    /// A TSIG key that cannot be used.
    #[error("TSIG key: {0}")]
    Key(String),
}

/// Checks one DNS label of a user or device name.
pub fn check_label(what: &str, s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadName(format!(
            "{what} {s:?} is not a valid name: use 1 to 63 lowercase letters, digits or '-' \
             (not at either end)"
        )))
    }
}

/// Parses a zone name (`tsmp.test` or `tsmp.test.`).
pub fn zone(s: &str) -> Result<Name, NameError> {
    let mut n = Name::from_str(s)
        .map_err(|e| NameError::BadName(format!("zone {s:?} is not a domain name: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId {
    /// The device's name (one label).
    pub device: String,
    /// Its user's name (one label).
    pub user: String,
}

impl DeviceId {
    /// Validates both labels.
    pub fn new(device: &str, user: &str) -> Result<Self, NameError> {
        check_label("device", device)?;
        check_label("user", user)?;
        Ok(DeviceId {
            device: device.to_owned(),
            user: user.to_owned(),
        })
    }

    /// A migration target as a user names it: `pc` (a device of `user`) or `pc.bob`.
    pub fn target(s: &str, user: &str) -> Result<Self, NameError> {
        match s.split_once('.') {
            None => DeviceId::new(s, user),
            Some((d, u)) => DeviceId::new(d, u.trim_end_matches('.')),
        }
    }

    /// `<device>.<user>.<zone>`.
    pub fn fqdn(&self, zone: &Name) -> Result<Name, NameError> {
        Name::from_str(&format!("{}.{}", self.device, self.user))
            .and_then(|n| n.append_domain(zone))
            .map_err(|e| NameError::BadName(format!("{self}: {e}")))
    }

    /// `_tsmp-agent._tcp.<device>.<user>.<zone>`.
    pub fn srv_name(&self, zone: &Name) -> Result<Name, NameError> {
        let base = self.fqdn(zone)?;
        Name::from_str(SRV_PREFIX)
            .and_then(|n| n.append_domain(&base))
            .map_err(|e| NameError::BadName(format!("{self}: {e}")))
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.device, self.user)
    }
}

/// What a device publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its agent's port (MTR).
    pub agent_port: u16,
    /// Its Ed25519 public key.
    pub key: [u8; 32],
}

/// A user's TSIG key (hmac-sha256), written as `hmac-sha256:<name>:<base64>` (nsupdate's `-y`
/// syntax) or `<name>:<base64>`.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name (the user's name).
    pub name: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({}, <secret>)", self.name)
    }
}

impl FromStr for TsigKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let s = s.trim();
        let rest = s.strip_prefix("hmac-sha256:").unwrap_or(s);
        let (name, b64) = rest.split_once(':').ok_or_else(|| {
            NameError::Key(
                "expected hmac-sha256:<user>:<base64 secret> (as printed by \
                 `tsmp-names add-user`)"
                    .into(),
            )
        })?;
        check_label("TSIG key name", name)?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| NameError::Key(format!("secret of {name} is not base64: {e}")))?;
        if secret.len() < 16 {
            return Err(NameError::Key(format!(
                "secret of {name} is {} bytes; use at least 16",
                secret.len()
            )));
        }
        Ok(TsigKey {
            name: name.to_owned(),
            secret,
        })
    }
}

impl std::fmt::Display for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hmac-sha256:{}:{}",
            self.name,
            base64::engine::general_purpose::STANDARD.encode(&self.secret)
        )
    }
}

impl TsigKey {
    /// The hickory signer for this key.
    pub fn signer(&self) -> Result<TSigner, NameError> {
        let name = Name::from_str(&self.name).map_err(|e| NameError::Key(e.to_string()))?;
        TSigner::new(self.secret.clone(), TsigAlgorithm::HmacSha256, name, FUDGE)
            .map_err(|e| NameError::Key(e.to_string()))
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client of one naming server (UDP, synchronous, with retries): what the agent and the
/// proxy's slow path use.
#[derive(Debug, Clone)]
pub struct Resolver {
    server: SocketAddr,
    zone: Name,
    timeout: Duration,
    tries: u32,
}

impl Resolver {
    /// A client of `server` for names under `zone`.
    pub fn new(server: SocketAddr, zone: Name) -> Self {
        Resolver {
            server,
            zone,
            timeout: Duration::from_millis(400),
            tries: 3,
        }
    }

    /// The zone.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// Sends `bytes` (a message with ID `id`) and returns the answer's bytes.
    pub fn exchange(&self, bytes: &[u8], id: u16) -> Result<Vec<u8>, NameError> {
        self.exchange_tries(bytes, id, self.tries)
    }

    /// [`Resolver::exchange`] with `tries` sends of the same bytes.
    fn exchange_tries(&self, bytes: &[u8], id: u16, tries: u32) -> Result<Vec<u8>, NameError> {
        let io = |e| NameError::Io(self.server, e);
        let local: SocketAddr = if self.server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).map_err(io)?;
        sock.connect(self.server).map_err(io)?;
        sock.set_read_timeout(Some(self.timeout)).map_err(io)?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..tries {
            sock.send(bytes).map_err(io)?;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                        return Ok(buf[..n].to_vec())
                    }
                    Ok(_) => continue,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    // Nothing listens (ICMP port unreachable): retry, then time out.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(self.timeout);
                        break;
                    }
                    Err(e) => return Err(io(e)),
                }
            }
        }
        Err(NameError::Timeout(self.server))
    }

    /// The records of type `rtype` at `name` (empty when the name or the type does not exist).
    pub fn query(&self, name: &Name, rtype: RecordType) -> Result<Vec<Record>, NameError> {
        let mut m = Message::query();
        let id = random_id();
        m.metadata.id = id;
        m.metadata.recursion_desired = false;
        m.add_query(Query::query(name.clone(), rtype));
        let bytes = m
            .to_vec()
            .map_err(|e| NameError::Malformed(name.to_string(), e.to_string()))?;
        let answer = self.exchange(&bytes, id)?;
        let r = Message::from_vec(&answer)
            .map_err(|e| NameError::Malformed(name.to_string(), format!("bad answer: {e}")))?;
        if r.metadata.message_type != MessageType::Response
            || r.queries.first().map(|q| (q.name(), q.query_type())) != Some((name, rtype))
        {
            return Err(NameError::Malformed(
                name.to_string(),
                "answer does not match the question".into(),
            ));
        }
        match r.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(r
                .answers
                .into_iter()
                .filter(|a| &a.name == name && a.record_type() == rtype)
                .collect()),
            c => Err(NameError::Refused {
                name: name.to_string(),
                code: mnemonic(c),
                why: "query failed".into(),
            }),
        }
    }

    /// A device's published address, agent port and key.
    pub fn device(&self, id: &DeviceId) -> Result<DeviceRecord, NameError> {
        let name = id.fqdn(&self.zone)?;
        let shown = name.to_string();
        let addr = self
            .query(&name, RecordType::A)?
            .iter()
            .find_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .ok_or_else(|| NameError::NotFound(shown.clone()))?;
        let key = self
            .query(&name, RecordType::TXT)?
            .iter()
            .find_map(|r| match &r.data {
                RData::TXT(t) => key_from_txt(t),
                _ => None,
            })
            .ok_or_else(|| NameError::Malformed(shown.clone(), "no device key (TXT)".into()))?;
        let agent_port = self
            .query(&id.srv_name(&self.zone)?, RecordType::SRV)?
            .iter()
            .find_map(|r| match &r.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .ok_or_else(|| NameError::Malformed(shown, "no agent port (SRV)".into()))?;
        Ok(DeviceRecord {
            addr,
            agent_port,
            key,
        })
    }

    /// The signed UPDATE that publishes `rec` for `id` (replacing what it published before),
    /// and its ID.
    pub fn registration(
        &self,
        key: &TsigKey,
        id: &DeviceId,
        rec: &DeviceRecord,
    ) -> Result<(Vec<u8>, u16), NameError> {
        let name = id.fqdn(&self.zone)?;
        let srv = id.srv_name(&self.zone)?;
        let mut m = Message::new(random_id(), MessageType::Query, OpCode::Update);
        m.metadata.recursion_desired = false;
        let mut z = Query::query(self.zone.clone(), RecordType::SOA);
        z.set_query_class(DNSClass::IN);
        m.add_query(z);
        for (n, t) in [
            (&name, RecordType::A),
            (&name, RecordType::TXT),
            (&srv, RecordType::SRV),
        ] {
            // RFC 2136 2.5.2: delete an RRset (class ANY, TTL 0, no data).
            let mut del = Record::update0(n.clone(), 0, t).into_record_of_rdata();
            del.dns_class = DNSClass::ANY;
            m.add_authority(del);
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(rec.key);
        m.add_authority(Record::from_rdata(name.clone(), TTL, RData::A(A(rec.addr))));
        m.add_authority(Record::from_rdata(
            name.clone(),
            TTL,
            RData::TXT(TXT::new(vec![format!("{KEY_PREFIX}{b64}")])),
        ));
        m.add_authority(Record::from_rdata(
            srv,
            TTL,
            RData::SRV(SRV::new(0, 0, rec.agent_port, name)),
        ));
        // The user's device list (`_devices.<user>.<zone>`, one TXT string per device): added
        // to, never replaced, so each device's registration keeps the others.
        m.add_authority(Record::from_rdata(
            devices_name(&id.user, &self.zone)?,
            TTL,
            RData::TXT(TXT::new(vec![id.device.clone()])),
        ));
        let id16 = m.metadata.id;
        m.finalize(&key.signer()?, unix_now())
            .map_err(|e| NameError::Key(e.to_string()))?;
        let bytes = m
            .to_vec()
            .map_err(|e| NameError::Key(format!("cannot encode the update: {e}")))?;
        Ok((bytes, id16))
    }

    /// Sends a signed update and maps its answer; `name` is what it changes (for messages).
    pub fn send_update(&self, bytes: &[u8], id: u16, name: &str) -> Result<(), NameError> {
        let answer = self.exchange(bytes, id)?;
        Self::update_answer(&answer, name)
    }

    fn update_answer(answer: &[u8], name: &str) -> Result<(), NameError> {
        let r = Message::from_vec(answer).map_err(|e| {
            NameError::Malformed(name.to_owned(), format!("bad answer to the update: {e}"))
        })?;
        let code = r.metadata.response_code;
        let why = match code {
            ResponseCode::NoError => return Ok(()),
            ResponseCode::Refused => {
                "the key may change only its own user's names, and each signed update is \
                 accepted once"
            }
            ResponseCode::NotAuth => {
                "the key is unknown to the server, the signature is wrong, or the clocks \
                 differ by more than 5 minutes"
            }
            ResponseCode::NotZone => "the name is not in the server's zone",
            _ => "the update failed",
        };
        Err(NameError::Refused {
            name: name.to_owned(),
            code: mnemonic(code),
            why: why.into(),
        })
    }

    /// The devices `user` registered (from `_devices.<user>.<zone>`); none is an empty list.
    pub fn devices_of(&self, user: &str) -> Result<Vec<DeviceId>, NameError> {
        Ok(self
            .query(&devices_name(user, &self.zone)?, RecordType::TXT)?
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => t
                    .txt_data
                    .first()
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| DeviceId::new(d, user).ok()),
                _ => None,
            })
            .collect())
    }

    /// Publishes (or replaces) device `id`'s records, signed with its user's key.
    pub fn register(
        &self,
        key: &TsigKey,
        id: &DeviceId,
        rec: &DeviceRecord,
    ) -> Result<(), NameError> {
        let shown = id.fqdn(&self.zone)?.to_string();
        // Each try is signed afresh: the server accepts a signed update once, so the same bytes
        // sent again (their answer lost or late) would be refused as a replay. The update
        // replaces the device's records: applying it twice changes nothing.
        let mut last = Err(NameError::Timeout(self.server));
        for _ in 0..self.tries {
            let (bytes, mid) = self.registration(key, id, rec)?;
            last = self.exchange_tries(&bytes, mid, 1);
            if let Ok(answer) = &last {
                return Self::update_answer(answer, &shown);
            }
        }
        last.map(|_| ())
    }
}

/// `_devices.<user>.<zone>`: the user's device list (one TXT string per device).
pub fn devices_name(user: &str, zone: &Name) -> Result<Name, NameError> {
    check_label("user", user)?;
    Name::from_str(&format!("_devices.{user}"))
        .and_then(|n| n.append_domain(zone))
        .map_err(|e| NameError::BadName(format!("{user}: {e}")))
}

/// The RFC 1035/2136 mnemonic of a response code (`REFUSED`, `NOTAUTH`, ...).
pub fn mnemonic(c: ResponseCode) -> String {
    match c {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => other.to_string(),
    }
}

fn key_from_txt(t: &TXT) -> Option<[u8; 32]> {
    t.txt_data.iter().find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix(KEY_PREFIX)?)
            .ok()?;
        b.try_into().ok()
    })
}

/// A random 16-bit message ID.
pub fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // A failing system RNG leaves ID 0: the answer still matches by question.
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cannot_reach_another_users_subtree() {
        assert!(check_label("device", "phone").is_ok());
        for bad in [
            "",
            "a.b",
            "Phone",
            "-x",
            "x-",
            "a b",
            &"x".repeat(64),
            "ph\u{e9}",
        ] {
            assert!(check_label("device", bad).is_err(), "{bad:?}");
        }
        let z = zone("tsmp.test").unwrap();
        let id = DeviceId::new("phone", "bob").unwrap();
        assert_eq!(id.fqdn(&z).unwrap().to_string(), "phone.bob.tsmp.test.");
        assert_eq!(
            id.srv_name(&z).unwrap().to_string(),
            "_tsmp-agent._tcp.phone.bob.tsmp.test."
        );
        assert_eq!(
            DeviceId::target("pc", "bob").unwrap(),
            DeviceId::new("pc", "bob").unwrap()
        );
        assert_eq!(DeviceId::target("pc.eve", "bob").unwrap().user, "eve");
        assert!(DeviceId::target("pc.eve.x", "bob").is_err());
    }

    #[test]
    fn tsig_keys_parse_in_nsupdate_syntax() {
        let k: TsigKey = "hmac-sha256:bob:MDEyMzQ1Njc4OWFiY2RlZg==".parse().unwrap();
        assert_eq!(k.name, "bob");
        assert_eq!(k.secret, b"0123456789abcdef");
        assert_eq!(k.to_string(), "hmac-sha256:bob:MDEyMzQ1Njc4OWFiY2RlZg==");
        assert!("bob".parse::<TsigKey>().is_err());
        assert!("bob:!!".parse::<TsigKey>().is_err());
        assert!("bob:YWJj".parse::<TsigKey>().is_err(), "short secret");
    }

    #[test]
    fn a_registration_replaces_three_rrsets_and_adds_to_the_device_list() {
        let r = Resolver::new("127.0.0.1:53".parse().unwrap(), zone("tsmp.test").unwrap());
        let k: TsigKey = "bob:MDEyMzQ1Njc4OWFiY2RlZg==".parse().unwrap();
        let id = DeviceId::new("phone", "bob").unwrap();
        let rec = DeviceRecord {
            addr: Ipv4Addr::new(198, 18, 0, 1),
            agent_port: 7001,
            key: [7; 32],
        };
        let (bytes, mid) = r.registration(&k, &id, &rec).unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, mid);
        assert_eq!(m.metadata.op_code, OpCode::Update);
        // Three deletions, three records, and the device added to the user's list.
        assert_eq!(m.authorities.len(), 7);
        let list = m.authorities.last().unwrap();
        assert_eq!(list.name.to_string(), "_devices.bob.tsmp.test.");
        assert!(matches!(&list.data, RData::TXT(t) if t.txt_data[0].as_ref() == b"phone"));
        assert!(m.signature().is_some());
        let (_, _, range) = k
            .signer()
            .unwrap()
            .verify_message_byte(&bytes, None, true)
            .unwrap();
        assert!(range.contains(&unix_now()));
        let txt = m
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::TXT(t) => key_from_txt(t),
                _ => None,
            })
            .unwrap();
        assert_eq!(txt, [7; 32]);
    }
}
