//! EAL-level integration test: the appliance in pass-through mode between two memif ports of
//! `tsmp-pktgen`, which sends 20,000 numbered frames of 62..1514 bytes, half each way, and checks
//! from the outside that every one arrives exactly once, on the other port, byte for byte.

mod common;

#[test]
fn frames_cross_memif_passthrough_intact() {
    common::require_root();
    let dir = common::TempDir::new("memif");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsmp-pktgen"))
        .args(["verify", "--count", "20000", "--dir"])
        .arg(&dir.0)
        .output()
        .expect("run tsmp-pktgen");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "verify failed:\n{text}");
    assert!(
        text.contains("sent=20000 received=20000 missing=0 duplicates=0 corrupt=0 misdirected=0"),
        "{text}"
    );
}
