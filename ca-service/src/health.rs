//! The health probe: a supervised task that signs and verifies with the CA key and pings the store
//! every `PROBE_INTERVAL`, and publishes whether both succeeded (the `api` reports it as
//! `grpc.health.v1`); and `StoreHealth`, what it needs from a store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hsm::Signer;
use crate::storage::StoreError;

/// How often the probe signs and verifies a message and pings the store.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What the health probe needs from a store.
pub trait StoreHealth: Send + Sync + 'static {
    /// Checks that the store answers (a round trip, bounded like any store operation).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Probes `signer` and `store` until `stop`, publishing each result on `status` (transitions
/// are logged).
pub async fn probe<S: StoreHealth>(
    signer: Signer,
    store: Arc<S>,
    status: watch::Sender<Option<bool>>,
    stop: CancellationToken,
) {
    loop {
        let probed = async { (signer.probe().await, store.ping().await) };
        let (hsm, store_ping) = tokio::select! {
            probed = probed => probed,
            () = stop.cancelled() => return,
        };
        let healthy = hsm.is_ok() && store_ping.is_ok();
        let changed = status.send_if_modified(|published| {
            let changed = *published != Some(healthy);
            *published = Some(healthy);
            changed
        });
        if changed {
            if let Err(error) = &hsm {
                tracing::warn!(%error, "health probe: HSM failing");
            }
            if let Err(error) = &store_ping {
                tracing::warn!(%error, "health probe: store failing");
            }
            tracing::info!(healthy, "health status changed");
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}
