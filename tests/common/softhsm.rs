//! A SoftHSM token for a whole test process, for the test binaries with their own `main`: SoftHSM reads `SOFTHSM2_CONF` once, and it can be set only while the process has one thread.

use std::path::Path;
use std::time::Duration;

use ca_service::hsm::{Hsm, HsmConfig, Pin};

/// Provisions a token labelled `label` (user PIN `pin`) under `directory`, makes it this
/// process's SoftHSM configuration and connects to it with a pool of two sessions. Call it first
/// in `main`, before any other thread starts.
pub fn connect(directory: &Path, label: &str, pin: &str) -> Hsm {
    let tokens = hsm_sim::TokenDirectory::create(&directory.join("softhsm")).expect("token directory");
    tokens.init_token(label, "test-so-pin", pin).expect("init token");
    hsm_sim::set_softhsm2_conf(&tokens.conf_path()).expect("SOFTHSM2_CONF");
    Hsm::connect(HsmConfig {
        module: hsm_sim::find_module().expect("SoftHSM2 module"),
        token_label: label.to_owned(),
        pin: Pin::new(pin),
        pool_size: 2,
        session_wait: Duration::from_secs(5),
    })
    .expect("connect to the token")
}
