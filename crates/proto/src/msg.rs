//! The control messages between device agents and the proxy (draft section 4.2.1, with the
//! security the draft leaves "TBC"): MFR, its reply, MTR, its reply, and migration status.
//!
//! # Wire format, version 1
//!
//! Every message travels on a TCP connection as one frame: a 4-byte big-endian length, then
//! that many bytes (at most [`MAX_FRAME`]) of a JSON envelope:
//!
//! ```text
//! {"v":1,"body":"<the message, itself JSON, as a string>","sig":"<base64 Ed25519 signature>"}
//! ```
//!
//! The signature covers `tsmp-v1:` followed by the body's bytes exactly as sent, so the
//! verifier never re-serialises. The body is one of [`Body`]'s variants, tagged by `"type"`:
//!
//! | type        | from -> to            | signed by          |
//! |-------------|-----------------------|--------------------|
//! | `mfr`       | holding agent -> proxy| the holding device |
//! | `mfr_reply` | proxy -> agent        | the proxy          |
//! | `status`    | proxy -> agent        | the proxy          |
//! | `mtr`       | proxy -> target agent | the proxy          |
//! | `mtr_reply` | target agent -> proxy | the target device  |
//!
//! Requests carry a timestamp (`ts_ms`, within [`MAX_SKEW_MS`] of the receiver's clock), a
//! random `nonce` (each accepted once) and the flow's migration `counter` (the device
//! generation that holds it, 0 for the device that opened it), so an old MFR can neither be
//! replayed nor move a flow back. Unknown fields are errors; a frame longer than
//! [`MAX_FRAME`] is refused before it is read.
//!
//! Invariant: [`open`] never trusts a body before [`Sealed::verify`] has checked it against a
//! key the caller obtained independently (the naming server, or the agent's configuration).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Protocol version.
pub const VERSION: u32 = 1;
/// The largest frame accepted, bytes.
pub const MAX_FRAME: usize = 4096;
/// Largest accepted clock difference between a request's timestamp and the receiver, ms.
pub const MAX_SKEW_MS: u64 = 30_000;
const DOMAIN: &[u8] = b"tsmp-v1:";

/// A migration request: move the sender's connection `client` -> `server` to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mfr {
    /// The user.
    pub user: String,
    /// The sending (holding) device.
    pub device: String,
    /// The device's end of the connection.
    pub client: SocketAddrV4,
    /// The proxy's end of the connection (the service address, or a migration port).
    pub server: SocketAddrV4,
    /// The target device: `pc` (same user) or `pc.user`.
    pub target: String,
    /// The flow's migration counter as the device knows it.
    pub counter: u32,
    /// Milliseconds since the epoch.
    pub ts_ms: u64,
    /// Random, hex.
    pub nonce: String,
}

pub use tsmp_core::refusal::Reason;

/// The proxy's answer to an MFR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Outcome {
    /// The flow is frozen; the MTR goes to the target.
    Accepted {
        /// The target device's address.
        target_addr: std::net::Ipv4Addr,
        /// The owning worker and the flow's slot there.
        worker: usize,
        /// The flow's slot.
        flow: u32,
    },
    /// Nothing changed.
    Refused {
        /// Why.
        reason: Reason,
        /// What to do about it.
        detail: String,
    },
}

/// The proxy's reply to an MFR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfrReply {
    /// The migration's id (0 when refused).
    pub migration: u64,
    /// Accepted or refused.
    pub outcome: Outcome,
    /// The nonce of the MFR answered.
    pub nonce: String,
}

/// Migration progress, sent to the requesting agent until `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The migration.
    pub migration: u64,
    /// `paused`, `mtr_sent`, `mtr_failed`, `connected`, `replaying`, `resumed`, `cancelled`,
    /// `reset`.
    pub phase: String,
    /// Details (offsets, durations, reasons).
    pub detail: String,
    /// The migration ended (resumed, cancelled or reset).
    pub last: bool,
    /// When the proxy's slow path saw it, ms since the epoch (the detail's `t=` values are the
    /// owning worker's clock, precise relative to each other).
    pub at_ms: u64,
}

/// Migration To Request: the proxy asks the target device to take a connection over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtr {
    /// The migration.
    pub migration: u64,
    /// The user.
    pub user: String,
    /// The target device (the receiver).
    pub device: String,
    /// The device that held the flow.
    pub from: String,
    /// The service address the application talked to.
    pub service: SocketAddrV4,
    /// Where to connect (the service address on the flow's migration port).
    pub connect: SocketAddrV4,
    /// The flow's migration counter once the target holds it.
    pub counter: u32,
    /// The migration port accepts the target until this time (ms since the epoch).
    pub deadline_ms: u64,
    /// Milliseconds since the epoch.
    pub ts_ms: u64,
    /// Random, hex.
    pub nonce: String,
}

/// The target agent's answer to an MTR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtrReply {
    /// The migration.
    pub migration: u64,
    /// The agent is connecting.
    pub accepted: bool,
    /// Why not, if not.
    pub detail: String,
    /// The nonce of the MTR answered.
    pub nonce: String,
}

/// A message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// See [`Mfr`].
    Mfr(Mfr),
    /// See [`MfrReply`].
    MfrReply(MfrReply),
    /// See [`Status`].
    Status(Status),
    /// See [`Mtr`].
    Mtr(Mtr),
    /// See [`MtrReply`].
    MtrReply(MtrReply),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    v: u32,
    body: String,
    sig: String,
}

/// A received message whose signature is not checked yet.
#[derive(Debug)]
pub struct Sealed {
    /// The parsed body (untrusted until [`Sealed::verify`]).
    pub body: Body,
    text: String,
    sig: Signature,
}

impl Sealed {
    /// Whether `key` signed this message.
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(key) else {
            return false;
        };
        vk.verify_strict(&signed_bytes(&self.text), &self.sig)
            .is_ok()
    }
}

fn signed_bytes(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + text.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(text.as_bytes());
    v
}

/// Signs `body` and frames it.
pub fn seal(body: &Body, key: &SigningKey) -> Vec<u8> {
    let text = serde_json::to_string(body).unwrap_or_default();
    let sig = key.sign(&signed_bytes(&text));
    let env = Envelope {
        v: VERSION,
        body: text,
        sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    };
    let json = serde_json::to_vec(&env).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Parses one frame's payload (without its length prefix).
pub fn open(payload: &[u8]) -> Result<Sealed, Reason> {
    if payload.len() > MAX_FRAME {
        return Err(Reason::Oversized);
    }
    let env: Envelope = serde_json::from_slice(payload).map_err(|_| {
        // An envelope of another version may have other fields.
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) if v.get("v").and_then(serde_json::Value::as_u64) != Some(1) => Reason::Version,
            _ => Reason::Garbage,
        }
    })?;
    if env.v != VERSION {
        return Err(Reason::Version);
    }
    let body: Body = serde_json::from_str(&env.body).map_err(|_| Reason::Garbage)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&env.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or(Reason::BadSignature)?;
    Ok(Sealed {
        body,
        text: env.body,
        sig,
    })
}

/// Reads one frame (blocking, with the stream's timeouts). `Err(Oversized)` without reading
/// the oversized payload.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(FrameError::Io)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::Refused(Reason::Oversized));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).map_err(FrameError::Io)?;
    Ok(buf)
}

/// Reads and opens one frame.
pub fn read_sealed(r: &mut impl Read) -> Result<Sealed, FrameError> {
    let f = read_frame(r)?;
    open(&f).map_err(FrameError::Refused)
}

/// Writes a sealed frame.
pub fn write_sealed(w: &mut impl Write, body: &Body, key: &SigningKey) -> std::io::Result<()> {
    w.write_all(&seal(body, key))
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The connection failed or timed out.
    Io(std::io::Error),
    /// The frame is not acceptable.
    Refused(Reason),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Refused(r) => write!(f, "{}", r.name()),
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 16 random bytes, hex.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Freshness of requests: timestamps within [`MAX_SKEW_MS`], each nonce once (remembered for
/// twice the skew, at most `capacity` of them; when full, requests are refused as replays
/// rather than forgetting a nonce early).
#[derive(Debug)]
pub struct Freshness {
    seen: HashMap<String, u64>,
    capacity: usize,
}

impl Freshness {
    /// Remembers at most `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        Freshness {
            seen: HashMap::new(),
            capacity,
        }
    }

    /// Whether a timestamp is acceptable now.
    pub fn timely(ts_ms: u64, now_ms: u64) -> bool {
        ts_ms.abs_diff(now_ms) <= MAX_SKEW_MS
    }

    /// Records `nonce`; false when it was seen (or the memory is full).
    pub fn first_use(&mut self, nonce: &str, now_ms: u64) -> bool {
        self.seen.retain(|_, exp| *exp >= now_ms);
        if nonce.len() < 16 || nonce.len() > 64 || self.seen.contains_key(nonce) {
            return false;
        }
        if self.seen.len() >= self.capacity {
            return false;
        }
        self.seen.insert(nonce.to_owned(), now_ms + 2 * MAX_SKEW_MS);
        true
    }
}

/// Loads a device's or the proxy's Ed25519 key (base64 of the 32-byte secret), creating it
/// (mode 0600) when the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, KeyError> {
    let at = || path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| KeyError::NotAKeyFile(at(), e.to_string()))?;
            let b: [u8; 32] = b.try_into().map_err(|_| KeyError::WrongLength(at()))?;
            Ok(SigningKey::from_bytes(&b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| KeyError::NoRandomness(e.to_string()))?;
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| KeyError::Create(d.display().to_string(), e))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| KeyError::Create(at(), e))?;
            writeln!(f, "{}", base64::engine::general_purpose::STANDARD.encode(b))
                .map_err(|e| KeyError::Write(at(), e))?;
            Ok(SigningKey::from_bytes(&b))
        }
        Err(e) => Err(KeyError::Read(at(), e)),
    }
}

/// Why a key could not be loaded, created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is not base64.
    #[error("{0}: not a key file ({1}); remove it to have a new key created")]
    NotAKeyFile(String, String),
    /// The file decodes to something else than 32 bytes.
    #[error("{0}: not a 32-byte Ed25519 secret; remove it to have a new key created")]
    WrongLength(String),
    /// The system has no randomness to offer.
    #[error("no system randomness: {0}")]
    NoRandomness(String),
    /// The key file or its directory could not be created.
    #[error("cannot create {0}: {1}")]
    Create(String, std::io::Error),
    /// The new key could not be written.
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    /// The key file exists but cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// A public key that is not base64 of 32 bytes.
    #[error("{0:?} is not a base64 Ed25519 public key (32 bytes)")]
    NotAPublicKey(String),
}

/// A public key as base64.
pub fn public_b64(key: &SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
}

/// Parses a base64 public key.
pub fn parse_public(s: &str) -> Result<[u8; 32], KeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::NotAPublicKey(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_are_their_serialised_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.name(), "{r:?}");
            assert_eq!(Reason::ALL[r.index()], r);
        }
    }

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn mfr() -> Body {
        Body::Mfr(Mfr {
            user: "bob".into(),
            device: "phone".into(),
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.0.10:80".parse().unwrap(),
            target: "pc".into(),
            counter: 0,
            ts_ms: 1,
            nonce: "00112233445566778899aabbccddeeff".into(),
        })
    }

    #[test]
    fn sealed_messages_verify_only_with_the_signers_key() {
        let k = key(1);
        let frame = seal(&mfr(), &k);
        let s = read_sealed(&mut &frame[..]).unwrap();
        assert_eq!(s.body, mfr());
        assert!(s.verify(&k.verifying_key().to_bytes()));
        assert!(!s.verify(&key(2).verifying_key().to_bytes()));
    }

    #[test]
    fn a_changed_body_breaks_the_signature() {
        let k = key(1);
        let frame = seal(&mfr(), &k);
        let text = String::from_utf8(frame[4..].to_vec()).unwrap();
        let forged = text.replace("\\\"pc\\\"", "\\\"tv\\\"");
        assert_ne!(forged, text);
        let s = open(forged.as_bytes()).unwrap();
        assert!(!s.verify(&k.verifying_key().to_bytes()));
    }

    #[test]
    fn bad_frames_are_refused_with_their_reason() {
        assert_eq!(open(b"hello").unwrap_err(), Reason::Garbage);
        assert_eq!(
            open(br#"{"v":2,"body":"{}","sig":"","extra":1}"#).unwrap_err(),
            Reason::Version
        );
        assert_eq!(
            open(br#"{"v":1,"body":"{\"type\":\"mfr\"}","sig":""}"#).unwrap_err(),
            Reason::Garbage
        );
        let big = vec![b' '; MAX_FRAME + 1];
        assert_eq!(open(&big).unwrap_err(), Reason::Oversized);
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(FrameError::Refused(Reason::Oversized))
        ));
        // Unknown fields in a body are refused too.
        let text = r#"{"type":"mfr","user":"bob","device":"phone","client":"198.18.0.1:1","server":"198.18.0.10:80","target":"pc","counter":0,"ts_ms":1,"nonce":"x","admin":true}"#;
        let env = serde_json::json!({"v":1,"body":text,"sig":""}).to_string();
        assert_eq!(open(env.as_bytes()).unwrap_err(), Reason::Garbage);
    }

    #[test]
    fn nonces_are_accepted_once_and_timestamps_within_the_skew() {
        let mut f = Freshness::new(2);
        assert!(f.first_use("00112233445566778899aabbccddeeff", 1000));
        assert!(!f.first_use("00112233445566778899aabbccddeeff", 2000));
        assert!(!f.first_use("short", 2000));
        assert!(f.first_use("10112233445566778899aabbccddeeff", 2000));
        assert!(
            !f.first_use("20112233445566778899aabbccddeeff", 2000),
            "full"
        );
        // Expired nonces make room again.
        assert!(f.first_use("20112233445566778899aabbccddeeff", 1000 + 3 * MAX_SKEW_MS));
        assert!(Freshness::timely(100_000, 100_000 + MAX_SKEW_MS));
        assert!(!Freshness::timely(100_000, 100_001 + MAX_SKEW_MS));
    }

    #[test]
    fn every_reason_has_a_distinct_index_and_name() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.name().is_empty());
        }
    }
}
