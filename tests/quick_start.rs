//! The README's first quick-start command, `deploy/dev.sh`, run to the end of its demo (`DEMO_ONLY=1`) on a
//! private data directory and port: the CA starts in dev mode, enrolls, renews, refuses a second key, and runs
//! the dual-control reset through the admin CLI, exiting 0.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::path::Path;
use std::process::Command;

#[test]
fn dev_sh_runs_its_demo_to_the_end() {
    let directory = tempfile::tempdir().expect("tempdir");
    // A port free a moment ago (the script binds it right away).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("DATA_DIR", directory.path().join("data"))
        .env("PORT", port.to_string())
        .env("DEMO_ONLY", "1")
        .output()
        .expect("run dev.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "dev.sh failed:\n{text}");
    for step in [
        "certificate issued and key pinned for \"alice\"",
        "certificate renewed for \"alice\"",
        "user already has a pinned key",
        "cannot approve her own request",
        "wrapped key:     stored",
    ] {
        assert!(text.contains(step), "dev.sh did not show {step:?}:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
}
