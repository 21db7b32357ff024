//! Issuance throughput on the embedded store next to PostgreSQL, in one run, through the real binary.
//!
//! `cargo bench -p ca-service --bench stores` (optionally `-- SECONDS CLIENTS`). Provisions one dev
//! CA (ECDSA P-256, SoftHSM), then serves it with `serve --config` on SQLite and afterwards on a
//! fresh PostgreSQL database (`E2EE_CA_TEST_POSTGRES_URL`, default the local `postgres` database),
//! and drives `IssueCertificate` from N concurrent gRPC clients, each request a new user with a
//! pre-generated P-256 CSR (so every request pins a key, writes a certificate and an audit entry).
//! Each store's line gives the CPU per certificate of the service, of PostgreSQL's processes and of
//! the load generator. Then the floor under any PostgreSQL store: the same number of connections
//! each committing the cheapest durable transaction (one single-row INSERT in autocommit, as the
//! store's own connections send it: prepared, over TCP), with PostgreSQL's CPU per transaction.

#![allow(
    clippy::expect_used,
    reason = "bench code: a failed expectation aborts the benchmark, as it should"
)]

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::{DevServer, UserKey, UserKeyPair};
use e2ee_ca_proto::v1::IssueCertificateRequest;

/// CSRs prepared per client: more than a client can use in the measured window on this machine.
const CSRS_PER_CLIENT: usize = 1500;

struct Measurement {
    ok: usize,
    errors: usize,
    elapsed: f64,
    latencies: Vec<Duration>,
    exhausted: bool,
    cpu: CpuSeconds,
}

/// CPU seconds spent in the measured window, by whom.
#[derive(Default, Clone, Copy)]
struct CpuSeconds {
    /// The service (SoftHSM signs inside it).
    service: f64,
    /// PostgreSQL's server processes (the local cluster: also its background workers, idle here
    /// for the embedded store).
    postgres: f64,
    /// This process: the gRPC clients.
    load_generator: f64,
}

impl CpuSeconds {
    fn now(service_pid: u32) -> CpuSeconds {
        CpuSeconds {
            service: support::cpu_seconds(service_pid).unwrap_or(f64::NAN),
            postgres: support::cpu_seconds_of_command("postgres"),
            load_generator: support::cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
        }
    }

    fn since(self, before: CpuSeconds) -> CpuSeconds {
        CpuSeconds {
            service: self.service - before.service,
            postgres: self.postgres - before.postgres,
            load_generator: self.load_generator - before.load_generator,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let seconds: u64 = arguments.first().and_then(|value| value.parse().ok()).unwrap_or(10);
    let clients: usize = arguments.get(1).and_then(|value| value.parse().ok()).unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let workspace = tempfile::tempdir()?;
        let data_dir = DevServer::start(workspace.path(), "ecdsa-p256").stop();
        let sqlite_config = data_dir.join("ca-service.toml");
        // Dropped (with FORCE) at the end of the run.
        let database = TestDatabase::create().await;
        let postgres_url = &database.url;
        // The same token and CA, served one store at a time (SoftHSM: one process per token directory).
        let postgres_config = data_dir.join("ca-service-postgres.toml");
        // Another log, so another signer guard: the embedded store's would (rightly) refuse a
        // fresh database as a rollback of the log it guards.
        let text = std::fs::read_to_string(&sqlite_config)?
            .replace(
                "url = \"sqlite:ca.sqlite3\"",
                &format!("url = {postgres_url:?}\npool_size = 16\ntimeout_ms = 5000"),
            )
            .replace(
                "guard_file = \"audit-signer-guard\"",
                "guard_file = \"audit-signer-guard-postgres\"",
            );
        anyhow::ensure!(
            text.contains("audit-signer-guard-postgres"),
            "the dev config names no guard file"
        );
        std::fs::write(&postgres_config, text)?;

        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            support::cpu_model()
        );
        println!(
            "settings: CA key ecdsa-p256 (SoftHSM, 4 signing sessions), user keys P-256, {clients} clients, {seconds} s"
        );
        for (name, config) in [
            ("embedded SQLite", &sqlite_config),
            ("PostgreSQL 15 (local)", &postgres_config),
        ] {
            let server = DevServer::start_with_config(config);
            let measurement = drive(&server, clients, Duration::from_secs(seconds)).await;
            drop(server);
            let per_certificate = |cpu: f64| cpu * 1e6 / measurement.ok.max(1) as f64;
            let mut latencies = measurement.latencies;
            latencies.sort();
            let percentile = |fraction: f64| {
                latencies
                    .get(((latencies.len() as f64 * fraction) as usize).min(latencies.len().saturating_sub(1)))
                    .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
            };
            println!(
                "{name}: {:.0} certificates/s ({} ok, {} errors in {:.1} s; latency p50 {:.1} ms, p99 {:.1} ms){}; \
                 CPU per certificate: service {:.0} µs (SoftHSM included), PostgreSQL's processes {:.0} µs, \
                 load generator {:.0} µs",
                measurement.ok as f64 / measurement.elapsed,
                measurement.ok,
                measurement.errors,
                measurement.elapsed,
                percentile(0.5),
                percentile(0.99),
                if measurement.exhausted {
                    "; CSRs ran out early"
                } else {
                    ""
                },
                per_certificate(measurement.cpu.service),
                per_certificate(measurement.cpu.postgres),
                per_certificate(measurement.cpu.load_generator),
            );
        }
        let floor = postgres_floor(postgres_url, clients, Duration::from_secs(seconds)).await?;
        println!(
            "PostgreSQL floor: {:.0} durable single-row transactions/s from {clients} connections; CPU per transaction: \
             PostgreSQL's processes {:.0} µs, load generator {:.0} µs",
            floor.ok as f64 / floor.elapsed,
            floor.cpu.postgres * 1e6 / floor.ok.max(1) as f64,
            floor.cpu.load_generator * 1e6 / floor.ok.max(1) as f64,
        );
        Ok(())
    })
}

/// What PostgreSQL alone costs: `clients` connections each committing one-row INSERTs, one
/// autocommit transaction each, for `window`.
async fn postgres_floor(url: &str, clients: usize, window: Duration) -> anyhow::Result<Measurement> {
    let setup = common::postgres::connect(url).await;
    setup
        .batch_execute("CREATE TABLE floor_probe (id bigserial PRIMARY KEY, value bigint NOT NULL)")
        .await?;
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(common::postgres::connect(url).await);
    }
    // No service: its slot in the accounting reads this process twice.
    let cpu_before = CpuSeconds::now(std::process::id());
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            tokio::spawn(async move {
                let insert = connection
                    .prepare("INSERT INTO floor_probe (value) VALUES ($1)")
                    .await?;
                let mut committed = 0_usize;
                while started.elapsed() < window {
                    connection.execute(&insert, &[&(committed as i64)]).await?;
                    committed += 1;
                }
                // Kept open until PostgreSQL's CPU is read: a closed connection's backend exits,
                // and its CPU time with it.
                Ok::<_, tokio_postgres::Error>((committed, connection))
            })
        })
        .collect();
    let mut ok = 0;
    let mut open = Vec::new();
    for task in tasks {
        let (committed, connection) = task.await??;
        ok += committed;
        open.push(connection);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = CpuSeconds::now(std::process::id()).since(cpu_before);
    drop(open);
    Ok(Measurement {
        ok,
        errors: 0,
        elapsed,
        latencies: Vec::new(),
        exhausted: false,
        cpu,
    })
}

/// Runs `clients` concurrent enrollers against `server` for `window`.
async fn drive(server: &DevServer, clients: usize, window: Duration) -> Measurement {
    let client = server.client().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let mut prepared = Vec::new();
    for worker in 0..clients {
        let requests: Vec<IssueCertificateRequest> = (0..CSRS_PER_CLIENT)
            .map(|sequence| {
                let user_id = format!("bench-{run}-{worker}-{sequence}");
                let csr_pem = UserKeyPair::generate(UserKey::EcP256).csr(&user_id);
                IssueCertificateRequest {
                    user_id,
                    csr_pem,
                    wait_for_checkpoint: false,
                }
            })
            .collect();
        prepared.push(requests);
    }
    let cpu_before = CpuSeconds::now(server.pid());
    let started = Instant::now();
    let deadline = started + window;
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|requests| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut measurement = Measurement {
                    ok: 0,
                    errors: 0,
                    elapsed: 0.0,
                    latencies: Vec::new(),
                    exhausted: true,
                    cpu: CpuSeconds::default(),
                };
                for request in requests {
                    if Instant::now() >= deadline {
                        measurement.exhausted = false;
                        break;
                    }
                    let sent = Instant::now();
                    match client.issue_certificate(request).await {
                        Ok(_) => {
                            measurement.ok += 1;
                            measurement.latencies.push(sent.elapsed());
                        }
                        Err(_) => measurement.errors += 1,
                    }
                }
                measurement
            })
        })
        .collect();
    let mut total = Measurement {
        ok: 0,
        errors: 0,
        elapsed: 0.0,
        latencies: Vec::new(),
        exhausted: false,
        cpu: CpuSeconds::default(),
    };
    for task in tasks {
        let Ok(measurement) = task.await else { continue };
        total.ok += measurement.ok;
        total.errors += measurement.errors;
        total.latencies.extend(measurement.latencies);
        total.exhausted |= measurement.exhausted;
    }
    total.elapsed = started.elapsed().as_secs_f64();
    total.cpu = CpuSeconds::now(server.pid()).since(cpu_before);
    total
}
