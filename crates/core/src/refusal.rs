//! Why a migration request, or a step of one, is refused: one type for every layer. The engine's
//! own [`crate::migrate::engine::MigrateError`], the data plane's checks, the control socket and
//! the agents' port all answer with a [`Refusal`]: a counted [`Reason`] and a detail that says
//! what happened and what to do.

/// Why a request was refused (counted by the proxy, shown to the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The frame is larger than [`MAX_FRAME`].
    Oversized,
    /// Not a frame of this protocol, or not JSON of the expected shape.
    Garbage,
    /// Another protocol version.
    Version,
    /// Not the message expected here.
    Unexpected,
    /// The signature does not verify with the device's published key.
    BadSignature,
    /// The sending device is not registered with the naming server.
    UnknownDevice,
    /// The request did not come from the sending device's registered address.
    NotFromDevice,
    /// The sending device does not hold the connection it names.
    NotHolder,
    /// The target device belongs to another user.
    TargetOtherUser,
    /// The target device is not registered.
    UnknownTarget,
    /// The target is the device that holds the flow.
    TargetIsHolder,
    /// The timestamp is too far from the proxy's clock.
    Stale,
    /// The nonce was used before.
    Replayed,
    /// The migration counter is not the flow's (an old request).
    StaleCounter,
    /// The proxy has no such flow.
    NoFlow,
    /// The migration engine refused (detail says why).
    Engine,
    /// The naming server did not answer.
    NamingServer,
    /// Too many control connections at once.
    Busy,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 18] = [
        Reason::Oversized,
        Reason::Garbage,
        Reason::Version,
        Reason::Unexpected,
        Reason::BadSignature,
        Reason::UnknownDevice,
        Reason::NotFromDevice,
        Reason::NotHolder,
        Reason::TargetOtherUser,
        Reason::UnknownTarget,
        Reason::TargetIsHolder,
        Reason::Stale,
        Reason::Replayed,
        Reason::StaleCounter,
        Reason::NoFlow,
        Reason::Engine,
        Reason::NamingServer,
        Reason::Busy,
    ];

    /// The counter index.
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The snake_case name (as serialised).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Oversized => "oversized",
            Reason::Garbage => "garbage",
            Reason::Version => "version",
            Reason::Unexpected => "unexpected",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownDevice => "unknown_device",
            Reason::NotFromDevice => "not_from_device",
            Reason::NotHolder => "not_holder",
            Reason::TargetOtherUser => "target_other_user",
            Reason::UnknownTarget => "unknown_target",
            Reason::TargetIsHolder => "target_is_holder",
            Reason::Stale => "stale",
            Reason::Replayed => "replayed",
            Reason::StaleCounter => "stale_counter",
            Reason::NoFlow => "no_flow",
            Reason::Engine => "engine",
            Reason::NamingServer => "naming_server",
            Reason::Busy => "busy",
        }
    }
}

/// A refused request: the counted reason and what happened (with the fix, where there is one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {detail}")]
pub struct Refusal {
    /// The counted reason.
    pub reason: Reason,
    /// What happened and what to do.
    pub detail: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<crate::migrate::engine::MigrateError> for Refusal {
    fn from(e: crate::migrate::engine::MigrateError) -> Self {
        Refusal::new(Reason::Engine, e.to_string())
    }
}
