//! EAL-level integration test: the appliance in pass-through mode between two memif ports of
//! `tsmp-pktgen`, which sends 20,000 numbered frames of 62..1514 bytes, half each way, and checks
//! from the outside that every one arrives exactly once, on the other port, byte for byte.

mod common;

#[test]
fn frames_cross_memif_passthrough_intact() {
    common::require_root();
    let dir = common::TempDir::new("memif");
    let (ok, text) = common::pktgen(&["verify", "--count", "20000"], &dir.0);
    assert!(ok, "verify failed:\n{text}");
    assert!(
        text.contains("sent=20000 received=20000 missing=0 duplicates=0 corrupt=0 misdirected=0"),
        "{text}"
    );
}
