//! The audit log's throughput and latency against the targets of spec/transparency-log.md §5: append rate, commit-to-checkpoint latency, offline recomputation.
//!
//! `cargo bench -p ca-service --bench audit_log -- [SECONDS] [WRITERS]` (defaults 8 32). No gRPC
//! and no issuance: WRITERS tasks append refusal-sized audit entries through the store's real write
//! path (`IssuanceStore::append_event`, one committed transaction each, as refusals are written)
//! while the real sequencer (`transparency::sequencer`) sequences them and signs checkpoints with
//! an ECDSA P-256 audit key on SoftHSM. On PostgreSQL (a fresh database through
//! `E2EE_CA_TEST_POSTGRES_URL`, default the local `postgres` database) and on the embedded store:
//! 1. append only: the writers alone for SECONDS (the sequencer not started), leaving a backlog;
//! 2. sequencer capacity: the sequencer started on that backlog, timed until a checkpoint covers it;
//! 3. mixed: writers and sequencer together for SECONDS: entries/s appended and sequenced, and
//!    per entry the time from its commit (`append_event` returned) to the storing of the first
//!    checkpoint that covers it (`store_checkpoint` returned), p50/p95/p99;
//! 4. offline: `audit export` of the PostgreSQL log and `export::verify` on it, and the RFC 6962
//!    recomputation alone (leaf hashes of 1,000,000 entries of the same size, then `Frontier`, one
//!    thread).

#![allow(
    clippy::expect_used,
    reason = "bench code: a failed expectation aborts the benchmark, as it should"
)]

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ca_service::audit::LogEntryRef;
use ca_service::audit::{AuditEvent, AuditKind};
use ca_service::config::sections::AuditSection;
use ca_service::config::store::PostgresLocation;
use ca_service::hsm::Signer;
use ca_service::hsm::{Hsm, HsmConfig, KeyAlgorithm, Pin};
use ca_service::issuer::IssuanceStore;
use ca_service::storage::StoreError;
use ca_service::store::postgres::PostgresStore;
use ca_service::store::sqlite::SqliteStore;
use ca_service::transparency::guard::SignerGuard;
use ca_service::transparency::inline::InlineSequencing;
use ca_service::transparency::sequencer::{self, Sequencer, SequencerHandle};
use ca_service::transparency::signer::AuditKey;
use ca_service::transparency::{LogHead, LogReader, LogSequencer, NodeKey, SequenceOutcome, StoredCheckpoint, export};
use common::postgres::TestDatabase;
use sha2::{Digest, Sha256};
use tlog::merkle::{Frontier, Hash, leaf_hash};
use tokio_util::sync::CancellationToken;

const TOKEN_LABEL: &str = "bench";
const USER_PIN: &str = "bench-user-pin";
const AUDIT_KEY_LABEL: &str = "bench-audit";
const ORIGIN: &str = "bench.example/audit-log";

/// Targets of spec/transparency-log.md §5.
const TARGET_APPEND_PER_SECOND: f64 = 10_000.0;
const TARGET_P99_TO_CHECKPOINT_MS: f64 = 500.0;
const TARGET_RECOMPUTE_PER_SECOND: f64 = 1_000_000.0;

/// Entries hashed for the offline recomputation rate.
const RECOMPUTE_ENTRIES: usize = 1_000_000;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|argument| argument.parse().ok())
        .collect();
    let seconds = Duration::from_secs(arguments.first().copied().unwrap_or(8) as u64);
    let writers = arguments.get(1).copied().unwrap_or(32);
    let workspace = tempfile::tempdir()?;
    let tokens = hsm_sim::TokenDirectory::create(&workspace.path().join("softhsm"))?;
    tokens.init_token(TOKEN_LABEL, "bench-so-pin", USER_PIN)?;
    // Single-threaded until here: SoftHSM reads SOFTHSM2_CONF in C_Initialize.
    hsm_sim::set_softhsm2_conf(&tokens.conf_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hsm = Hsm::connect(HsmConfig {
            module: hsm_sim::find_module()?,
            token_label: TOKEN_LABEL.to_owned(),
            pin: Pin::new(USER_PIN),
            pool_size: 2,
            session_wait: Duration::from_secs(5),
        })?;
        let key = {
            let hsm = hsm.clone();
            tokio::task::spawn_blocking(move || hsm.generate_key(AUDIT_KEY_LABEL, KeyAlgorithm::EcdsaP256)).await??
        };
        let key = AuditKey::new(Signer::new(hsm.clone(), key)?, ORIGIN)?;
        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            support::cpu_model()
        );
        println!(
            "settings: {writers} writers, {} s per phase, sequencer defaults (max_batch {}), audit key ECDSA P-256 on SoftHSM",
            seconds.as_secs(),
            sequencer_config().max_batch
        );

        // Dropped (with FORCE) at the end of the run.
        let database = TestDatabase::create().await;
        let connection: tokio_postgres::Config = database.url.parse()?;
        let location = PostgresLocation {
            connection,
            pool_size: writers + 4,
            timeout: Duration::from_secs(10),
        };
        let postgres = Timed::new(PostgresStore::connect(&location).await?);
        let guard_file = workspace.path().join("postgres.guard");
        let postgres = run_store("PostgreSQL", postgres, &key, writers, seconds, guard_file).await;
        let sqlite = match SqliteStore::open(&workspace.path().join("bench.sqlite3")) {
            Ok(store) => {
                let guard_file = workspace.path().join("sqlite.guard");
                run_store("embedded SQLite", Timed::new(store), &key, writers, seconds, guard_file).await
            }
            Err(error) => Err(error.into()),
        };
        let offline = match &postgres {
            Ok(store) => offline(store, &key, workspace.path()).await,
            Err(_) => Err(anyhow::anyhow!("the PostgreSQL run failed")),
        };
        postgres?;
        sqlite?;
        offline?;
        Ok(())
    })
}

/// The sequencer's settings: the service's defaults (an `[audit]` section with only the key and origin).
fn sequencer_config() -> sequencer::SequencerConfig {
    AuditSection {
        key_label: AUDIT_KEY_LABEL.to_owned(),
        origin: ORIGIN.to_owned(),
        sequence_wait_ms: None,
        max_batch: None,
        poll_interval_ms: None,
        heartbeat_seconds: None,
        checkpoint_interval_ms: None,
        guard_file: PathBuf::new(),
    }
    .sequencer()
}

/// The sequencer running as the service runs it: stopped (and drained) through its token.
struct RunningSequencer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSequencer {
    /// Stops it, waiting for its last signature.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the real sequencer on `store` exactly as the service does (the one place to adapt when
/// `Sequencer` changes).
fn start_sequencer<L: LogSequencer>(
    store: Arc<L>,
    key: &AuditKey,
    guard_file: &Path,
) -> anyhow::Result<(SequencerHandle, RunningSequencer)> {
    let guard = SignerGuard::open(guard_file, key.origin())?;
    let (sequencer, handle) = Sequencer::new(store, key.clone(), guard, sequencer_config());
    let stop = CancellationToken::new();
    let task = tokio::spawn(sequencer.run(stop.clone()));
    Ok((handle, RunningSequencer { stop, task }))
}

/// One phase's appends: per entry, its hash and the instant its commit returned.
#[derive(Default)]
struct Appends {
    entries: Vec<([u8; 32], Instant)>,
    errors: usize,
}

/// `writers` tasks appending refusal entries for `window`, waking `sequencer` after each commit as
/// the issuer does.
async fn append_for<S: IssuanceStore>(
    store: &Arc<Timed<S>>,
    writers: usize,
    window: Duration,
    sequencer: Option<&SequencerHandle>,
) -> (Appends, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = Arc::clone(store);
            let sequencer = sequencer.cloned();
            tokio::spawn(async move {
                let mut appends = Appends::default();
                let mut sequence = 0u64;
                while started.elapsed() < window {
                    let event = refusal(writer, sequence);
                    sequence += 1;
                    match store.inner.append_event(event).await {
                        Ok(LogEntryRef { entry_hash, .. }) => {
                            appends.entries.push((entry_hash, Instant::now()));
                            if let Some(sequencer) = &sequencer {
                                sequencer.wake();
                            }
                        }
                        Err(_) => appends.errors += 1,
                    }
                }
                appends
            })
        })
        .collect();
    let mut total = Appends::default();
    for task in tasks {
        let Ok(appends) = task.await else {
            total.errors += 1;
            continue;
        };
        total.entries.extend(appends.entries);
        total.errors += appends.errors;
    }
    (total, started.elapsed())
}

/// A refusal as the issuer writes it (kind, actor, subject, key hash, reason): about 280 bytes.
fn refusal(writer: usize, sequence: u64) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::IssuanceRefused,
        actor: "bench".to_owned(),
        subject: format!("bench-user-{writer}-{sequence}@example.com"),
        details: vec![
            ("key-sha256", hex::encode(rand::random::<[u8; 32]>())),
            ("reason", "key pinned to another user".to_owned()),
        ],
    }
}

/// Waits until a stored checkpoint covers `size` entries, at most `bound`; returns when it was stored.
async fn checkpoint_covering<L>(store: &Timed<L>, size: u64, bound: Duration) -> Option<Instant> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(at) = store.first_checkpoint_covering(size) {
            return Some(at);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Phases 1–3 on one store; returns the store for the offline phase.
async fn run_store<S: IssuanceStore + LogSequencer>(
    name: &str,
    store: Timed<S>,
    key: &AuditKey,
    writers: usize,
    window: Duration,
    guard_file: PathBuf,
) -> anyhow::Result<Arc<Timed<S>>> {
    let store = Arc::new(store);
    println!("{name}:");

    // 1. Append only.
    let (backlog, elapsed) = append_for(&store, writers, window, None).await;
    let backlog_size = backlog.entries.len() as u64;
    println!(
        "  append only: {:.0} entries/s committed ({backlog_size} in {:.1} s, {} errors, {writers} writers)",
        backlog_size as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        backlog.errors
    );

    // 2. The sequencer drains the backlog.
    let started = Instant::now();
    let (handle, sequencer) = start_sequencer(Arc::clone(&store), key, &guard_file)?;
    let Some(covered_at) = checkpoint_covering(&store, backlog_size, Duration::from_secs(60)).await else {
        sequencer.stop().await;
        anyhow::bail!("{name}: no checkpoint covered the backlog of {backlog_size} within 60 s");
    };
    let drain = covered_at - started;
    let checkpoints = store.checkpoints_stored();
    println!(
        "  sequencer capacity: {:.0} entries/s ({backlog_size} pending entries sequenced and signed in {:.2} s, {} checkpoints) [target >= {TARGET_APPEND_PER_SECOND:.0}: {:.2}x]",
        backlog_size as f64 / drain.as_secs_f64(),
        drain.as_secs_f64(),
        checkpoints,
        backlog_size as f64 / drain.as_secs_f64() / TARGET_APPEND_PER_SECOND,
    );

    // 3. Writers and sequencer together.
    let signed_before = store.signed_size();
    let checkpoints_before = store.checkpoints_stored();
    let (mixed, elapsed) = append_for(&store, writers, window, Some(&handle)).await;
    let signed_in_window = store.signed_size() - signed_before;
    let total = backlog_size + mixed.entries.len() as u64;
    let caught_up = checkpoint_covering(&store, total, Duration::from_secs(30)).await;
    let checkpoints = store.checkpoints_stored() - checkpoints_before;
    sequencer.stop().await;
    let appended_rate = mixed.entries.len() as f64 / elapsed.as_secs_f64();
    let sequenced_rate = signed_in_window as f64 / elapsed.as_secs_f64();
    println!(
        "  mixed: {appended_rate:.0} entries/s appended, {sequenced_rate:.0} entries/s sequenced and signed ({} entries in {:.1} s, {} errors, {checkpoints} checkpoints = {:.1} signatures/s) [target >= {TARGET_APPEND_PER_SECOND:.0}: {:.2}x]",
        mixed.entries.len(),
        elapsed.as_secs_f64(),
        mixed.errors,
        checkpoints as f64 / elapsed.as_secs_f64(),
        appended_rate.min(sequenced_rate) / TARGET_APPEND_PER_SECOND,
    );
    let Some(_) = caught_up else {
        anyhow::bail!("{name}: the sequencer did not catch up with {total} entries within 30 s");
    };

    // Commit → checkpoint latency: map each entry to its index through the stored bytes.
    let indices = entry_indices(&store.inner, total).await?;
    let mut latencies: Vec<f64> = Vec::with_capacity(mixed.entries.len());
    for (hash, committed) in &mixed.entries {
        let index = *indices
            .get(hash)
            .ok_or_else(|| anyhow::anyhow!("{name}: an appended entry is not in the log"))?;
        let stored = store
            .first_checkpoint_covering(index + 1)
            .ok_or_else(|| anyhow::anyhow!("{name}: entry {index} is not covered by a checkpoint"))?;
        latencies.push(stored.saturating_duration_since(*committed).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let percentile = |fraction: f64| {
        latencies
            .get(((latencies.len() as f64 * fraction) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let p99 = percentile(0.99);
    println!(
        "  commit to signed checkpoint: p50 {:.1} ms, p95 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms [target p99 <= {TARGET_P99_TO_CHECKPOINT_MS:.0} ms: {:.2}x the budget]",
        percentile(0.5),
        percentile(0.95),
        latencies.last().copied().unwrap_or(0.0),
        p99 / TARGET_P99_TO_CHECKPOINT_MS,
    );
    let mean_bytes = mean_entry_bytes(&store.inner, total).await?;
    println!("  entries: {total} in the log, {mean_bytes:.0} bytes on average");
    Ok(store)
}

/// Leaf index of every entry in `[0, size)`, by the SHA-256 of its bytes (what `append_event` returns).
async fn entry_indices<L: LogReader>(store: &L, size: u64) -> anyhow::Result<std::collections::HashMap<[u8; 32], u64>> {
    let mut indices = std::collections::HashMap::with_capacity(size as usize);
    let mut start = 0;
    while start < size {
        let end = size.min(start + 4096);
        for (index, bytes) in (start..).zip(store.entries(start, end).await?) {
            indices.insert(Sha256::digest(&bytes).into(), index);
        }
        start = end;
    }
    Ok(indices)
}

async fn mean_entry_bytes<L: LogReader>(store: &L, size: u64) -> anyhow::Result<f64> {
    let sample = store.entries(0, size.min(1000)).await?;
    Ok(sample.iter().map(Vec::len).sum::<usize>() as f64 / sample.len().max(1) as f64)
}

/// Phase 4: export and verify the PostgreSQL log offline, then the recomputation alone.
async fn offline<L: LogReader>(store: &Timed<L>, key: &AuditKey, workspace: &Path) -> anyhow::Result<()> {
    let dir = workspace.join("export");
    let started = Instant::now();
    let summary = export::export(&store.inner, &dir, Some(key.verifier())).await?;
    let exported = started.elapsed();
    let options = export::VerifyOptions {
        trusted_key: key.verifier().clone(),
        pinned: None,
        time_tolerance: Duration::from_secs(1),
    };
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || export::verify(&dir, &options)).await??;
    let verified = started.elapsed();
    println!(
        "offline: audit export of {} entries in {:.2} s; export::verify (read, parse, times, recompute, signature) {:.0} entries/s",
        summary.entries,
        exported.as_secs_f64(),
        report.size as f64 / verified.as_secs_f64(),
    );

    // The recomputation alone, one thread: leaf hashes of entries of the benchmark's size, then the frontier.
    let (hashing, merging) = tokio::task::spawn_blocking(recompute).await?;
    let per_second = |elapsed: Duration| RECOMPUTE_ENTRIES as f64 / elapsed.as_secs_f64();
    let total = per_second(hashing + merging);
    println!(
        "offline recomputation, 1 thread, {RECOMPUTE_ENTRIES} refusal entries: {total:.0} entries/s (leaf hashing {:.0}/s, Frontier merging {:.0}/s) [target >= {TARGET_RECOMPUTE_PER_SECOND:.0}/s/core: {:.2}x]",
        per_second(hashing),
        per_second(merging),
        total / TARGET_RECOMPUTE_PER_SECOND,
    );
    Ok(())
}

/// Hashes `RECOMPUTE_ENTRIES` refusal-sized entries into leaves, then merges them into a frontier;
/// returns both times.
fn recompute() -> (Duration, Duration) {
    let entries: Vec<Vec<u8>> = (0..RECOMPUTE_ENTRIES as u64)
        .map(|sequence| refusal(0, sequence).encode().bytes)
        .collect();
    let started = Instant::now();
    let leaves: Vec<Hash> = entries.iter().map(|entry| leaf_hash(entry)).collect();
    let hashing = started.elapsed();
    let started = Instant::now();
    let mut frontier = Frontier::new();
    for leaf in &leaves {
        // Fewer than 2^64 leaves: the frontier is never full.
        frontier.push(*leaf).expect("room for a leaf");
    }
    std::hint::black_box(frontier.root());
    (hashing, started.elapsed())
}

/// A log store that records when each checkpoint was stored (after the inner store returned),
/// so the latency ends where the service's would: the checkpoint is durable.
struct Timed<L> {
    inner: L,
    /// `(size, stored at)` in storing order (sizes only grow).
    checkpoints: Mutex<Vec<(u64, Instant)>>,
}

impl<L> Timed<L> {
    fn new(inner: L) -> Timed<L> {
        Timed {
            inner,
            checkpoints: Mutex::new(Vec::new()),
        }
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        // A writer that panicked holding the lock left a complete Vec behind.
        self.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the first checkpoint of at least `size` entries was stored.
    fn first_checkpoint_covering(&self, size: u64) -> Option<Instant> {
        let checkpoints = self.checkpoints();
        let position = checkpoints.partition_point(|(signed, _)| *signed < size);
        checkpoints.get(position).map(|(_, at)| *at)
    }

    fn signed_size(&self) -> u64 {
        self.checkpoints().last().map_or(0, |(size, _)| *size)
    }

    fn checkpoints_stored(&self) -> usize {
        self.checkpoints().len()
    }
}

impl<L: LogReader> LogReader for Timed<L> {
    async fn log_head(&self) -> Result<LogHead, StoreError> {
        self.inner.log_head().await
    }

    async fn subtree_hashes(&self, keys: Vec<NodeKey>) -> Result<Vec<Option<Hash>>, StoreError> {
        self.inner.subtree_hashes(keys).await
    }

    async fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.entries(start, end).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.inner.latest_checkpoint().await
    }
}

impl<L: LogSequencer> LogSequencer for Timed<L> {
    type Leadership = L::Leadership;

    async fn try_lead(&self) -> Result<Option<L::Leadership>, StoreError> {
        self.inner.try_lead().await
    }

    fn still_leading(&self, leadership: &L::Leadership) -> bool {
        self.inner.still_leading(leadership)
    }

    async fn sequence(&self, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
        self.inner.sequence(expected, max_entries).await
    }

    fn inline_sequencing(&self) -> Option<&InlineSequencing> {
        self.inner.inline_sequencing()
    }

    fn nudge(&self) {
        self.inner.nudge();
    }

    async fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        let size = checkpoint.size;
        self.inner.store_checkpoint(checkpoint).await?;
        let mut checkpoints = self.checkpoints();
        // A heartbeat re-signs the same size: the first storing is the one that counts.
        if checkpoints.last().is_none_or(|(signed, _)| *signed < size) {
            checkpoints.push((size, Instant::now()));
        }
        Ok(())
    }
}
