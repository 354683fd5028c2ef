//! The checks an MFR passes before any worker hears of it, as one pure function of the message,
//! the sender's address, the time, a [`Directory`] of devices and the [`Freshness`] store: no
//! socket, no clock, no shared state, so each refusal has a unit test.
//!
//! Order (each refusal changes nothing but the freshness store, and that only once the
//! signature holds): the names are labels; the timestamp is within the allowed skew; the sending
//! device is registered; the signature verifies with its published key; the request comes from
//! its registered address; that address is the connection's client; the nonce is new; the
//! target is a device of the same user, not the sender itself, and registered.

use std::net::Ipv4Addr;

use tsmp_core::refusal::{Reason, Refusal};

use crate::msg::{Freshness, Mfr, Sealed};
use crate::names::{DeviceId, DeviceRecord, NameError, Resolver};

/// Where devices' records come from (the naming service; a table in tests).
pub trait Directory {
    /// The record `id` publishes.
    ///
    /// # Errors
    /// The name is not registered, or the naming service did not answer.
    fn device(&self, id: &DeviceId) -> Result<DeviceRecord, NameError>;
}

impl Directory for Resolver {
    fn device(&self, id: &DeviceId) -> Result<DeviceRecord, NameError> {
        Resolver::device(self, id)
    }
}

/// Where nonces are remembered: a [`Freshness`] store, or one shared behind a mutex (locked only
/// for the nonce itself, never across a naming-service lookup).
pub trait NonceStore {
    /// Records `nonce` at `now_ms`; false when it was seen (or the store is full).
    fn first_use(&mut self, nonce: &str, now_ms: u64) -> bool;
}

impl NonceStore for Freshness {
    fn first_use(&mut self, nonce: &str, now_ms: u64) -> bool {
        Freshness::first_use(self, nonce, now_ms)
    }
}

impl NonceStore for &std::sync::Mutex<Freshness> {
    fn first_use(&mut self, nonce: &str, now_ms: u64) -> bool {
        self.lock().is_ok_and(|mut f| f.first_use(nonce, now_ms))
    }
}

/// An MFR that passed every check: who sent it and where the flow goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The sending device.
    pub origin: DeviceId,
    /// The target device.
    pub target: DeviceId,
    /// The target's record (address, agent port, key).
    pub target_record: DeviceRecord,
}

/// Looks `id` up; a name nobody registered is refused as `unknown`, a naming service that did
/// not answer as [`Reason::NamingServer`].
///
/// # Errors
/// Either refusal.
pub fn lookup(
    dir: &impl Directory,
    id: &DeviceId,
    unknown: Reason,
) -> Result<DeviceRecord, Refusal> {
    dir.device(id).map_err(|e| match e {
        NameError::Timeout(_) | NameError::Io(..) => {
            Refusal::new(Reason::NamingServer, e.to_string())
        }
        _ => Refusal::new(unknown, e.to_string()),
    })
}

/// Every check of `mfr` (inside `sealed`) sent from `peer` at `now_ms` that needs no worker.
///
/// # Errors
/// The first check that fails, with its reason and what to do.
pub fn check_mfr(
    sealed: &Sealed,
    mfr: &Mfr,
    peer: Ipv4Addr,
    now_ms: u64,
    dir: &impl Directory,
    fresh: &mut impl NonceStore,
) -> Result<Admitted, Refusal> {
    let origin = DeviceId::new(&mfr.device, &mfr.user)
        .map_err(|e| Refusal::new(Reason::Garbage, e.to_string()))?;
    if !Freshness::timely(mfr.ts_ms, now_ms) {
        return Err(Refusal::new(
            Reason::Stale,
            "timestamp more than 30 s from the proxy's clock; synchronise the device's clock",
        ));
    }
    let rec = lookup(dir, &origin, Reason::UnknownDevice)?;
    if !sealed.verify(&rec.key) {
        return Err(Refusal::new(
            Reason::BadSignature,
            format!("not signed with {origin}'s registered key; register the device again"),
        ));
    }
    if rec.addr != peer {
        return Err(Refusal::new(
            Reason::NotFromDevice,
            format!(
                "{origin} is registered at {}, the request came from {peer}",
                rec.addr
            ),
        ));
    }
    if *mfr.client.ip() != peer {
        return Err(Refusal::new(
            Reason::NotHolder,
            format!(
                "{peer} does not hold connection {}-{}",
                mfr.client, mfr.server
            ),
        ));
    }
    if !fresh.first_use(&mfr.nonce, now_ms) {
        return Err(Refusal::new(
            Reason::Replayed,
            "this request was seen before",
        ));
    }
    let target = DeviceId::target(&mfr.target, &mfr.user)
        .map_err(|e| Refusal::new(Reason::UnknownTarget, e.to_string()))?;
    if target.user != origin.user {
        return Err(Refusal::new(
            Reason::TargetOtherUser,
            format!("{target} is not a device of {}", origin.user),
        ));
    }
    if target.device == origin.device {
        return Err(Refusal::new(
            Reason::TargetIsHolder,
            format!("{origin} already holds the connection"),
        ));
    }
    let target_record = lookup(dir, &target, Reason::UnknownTarget)?;
    Ok(Admitted {
        origin,
        target,
        target_record,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::msg::{read_sealed, seal, Body};

    const NOW: u64 = 1_800_000_000_000;
    const PHONE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    /// bob's phone and PC, eve's laptop; `down` makes every lookup time out.
    struct Dir {
        devices: HashMap<String, DeviceRecord>,
        down: bool,
    }

    impl Directory for Dir {
        fn device(&self, id: &DeviceId) -> Result<DeviceRecord, NameError> {
            if self.down {
                return Err(NameError::Timeout(SocketAddr::from((
                    [198, 18, 0, 254],
                    53,
                ))));
            }
            self.devices
                .get(&id.to_string())
                .copied()
                .ok_or_else(|| NameError::NotFound(id.to_string()))
        }
    }

    fn dir() -> Dir {
        let rec = |addr, k: u8| DeviceRecord {
            addr,
            agent_port: 7001,
            key: key(k).verifying_key().to_bytes(),
        };
        Dir {
            devices: [
                ("phone.bob".to_owned(), rec(PHONE, 1)),
                ("pc.bob".to_owned(), rec(PC, 2)),
                (
                    "laptop.eve".to_owned(),
                    rec(Ipv4Addr::new(198, 18, 0, 66), 3),
                ),
            ]
            .into(),
            down: false,
        }
    }

    fn mfr() -> Mfr {
        Mfr {
            user: "bob".into(),
            device: "phone".into(),
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.0.10:80".parse().unwrap(),
            target: "pc".into(),
            counter: 0,
            ts_ms: NOW,
            nonce: "00112233445566778899aabbccddeeff".into(),
        }
    }

    /// `m` signed with `k`, sent from `peer`, checked against `d` with a fresh store.
    fn run(m: &Mfr, k: u8, peer: Ipv4Addr, d: &Dir) -> Result<Admitted, Refusal> {
        let frame = seal(&Body::Mfr(m.clone()), &key(k));
        let sealed = read_sealed(&mut &frame[..]).unwrap();
        check_mfr(&sealed, m, peer, NOW, d, &mut Freshness::new(16))
    }

    fn reason(r: Result<Admitted, Refusal>) -> Reason {
        r.expect_err("refused").reason
    }

    #[test]
    fn a_request_from_the_holder_to_its_own_users_device_is_admitted() {
        let a = run(&mfr(), 1, PHONE, &dir()).unwrap();
        assert_eq!(a.origin.to_string(), "phone.bob");
        assert_eq!(a.target.to_string(), "pc.bob");
        assert_eq!(a.target_record.addr, PC);
    }

    #[test]
    fn a_device_name_that_is_not_a_label_is_garbage() {
        let m = Mfr {
            device: "ph one".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::Garbage);
    }

    #[test]
    fn a_timestamp_outside_the_skew_is_stale() {
        let m = Mfr {
            ts_ms: NOW - 31_000,
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::Stale);
    }

    #[test]
    fn an_unregistered_sender_is_unknown() {
        let m = Mfr {
            device: "tablet".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::UnknownDevice);
    }

    #[test]
    fn a_naming_service_that_does_not_answer_is_named() {
        let d = Dir {
            down: true,
            ..dir()
        };
        assert_eq!(reason(run(&mfr(), 1, PHONE, &d)), Reason::NamingServer);
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        assert_eq!(reason(run(&mfr(), 3, PHONE, &dir())), Reason::BadSignature);
    }

    #[test]
    fn a_request_from_another_address_is_not_from_the_device() {
        assert_eq!(reason(run(&mfr(), 1, PC, &dir())), Reason::NotFromDevice);
    }

    #[test]
    fn a_connection_of_another_address_is_not_the_senders() {
        let m = Mfr {
            client: "198.18.0.9:40000".parse().unwrap(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::NotHolder);
    }

    #[test]
    fn a_nonce_used_before_is_a_replay_and_a_refusal_before_it_records_nothing() {
        let m = mfr();
        let frame = seal(&Body::Mfr(m.clone()), &key(1));
        let sealed = read_sealed(&mut &frame[..]).unwrap();
        let mut fresh = Freshness::new(16);
        // Refused on its signature's address first: the nonce is not spent.
        assert_eq!(
            check_mfr(&sealed, &m, PC, NOW, &dir(), &mut fresh)
                .unwrap_err()
                .reason,
            Reason::NotFromDevice
        );
        assert!(check_mfr(&sealed, &m, PHONE, NOW, &dir(), &mut fresh).is_ok());
        assert_eq!(
            check_mfr(&sealed, &m, PHONE, NOW + 1, &dir(), &mut fresh)
                .unwrap_err()
                .reason,
            Reason::Replayed
        );
    }

    #[test]
    fn a_target_nobody_registered_is_unknown() {
        let m = Mfr {
            target: "fridge".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::UnknownTarget);
        let m = Mfr {
            target: "not a label".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::UnknownTarget);
    }

    #[test]
    fn a_target_of_another_user_is_refused() {
        let m = Mfr {
            target: "laptop.eve".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::TargetOtherUser);
    }

    #[test]
    fn the_holder_as_its_own_target_is_refused() {
        let m = Mfr {
            target: "phone".into(),
            ..mfr()
        };
        assert_eq!(reason(run(&m, 1, PHONE, &dir())), Reason::TargetIsHolder);
    }
}
