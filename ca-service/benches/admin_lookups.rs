//! The Admin service's lookups at scale: `ListIdentities` pages (keyset pagination) and
//! `GetIdentity` at 1,000,000 identities, on the embedded store and on PostgreSQL, next to the same
//! calls at 1,000 identities measured in the same run (the ratio shows whether a page's cost grows
//! with the table or with its depth).
//!
//! `cargo bench -p ca-service --bench admin_lookups` (optionally `-- IDENTITIES REPEATS`, defaults
//! 1000000 and 200). It times the store calls the Admin handlers make (`IdentityDirectory`), without
//! gRPC and TLS, whose cost does not depend on the table. Identities are bulk-inserted with SQL
//! (a pin per user, no certificates), which is what the listing reads.

#![allow(
    clippy::expect_used,
    reason = "bench code: a failed expectation aborts the benchmark, as it should"
)]

use std::time::{Duration, Instant};

use ca_service::api::admin::IdentityDirectory;
use ca_service::config::store::PostgresLocation;
use ca_service::identity::UserId;
use ca_service::store::postgres::PostgresStore;
use ca_service::store::sqlite::SqliteStore;

const PAGE: usize = 100;

fn user(index: usize) -> String {
    format!("user{index:08}")
}

fn key(index: usize) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(index.to_le_bytes()).to_vec()
}

/// Mean and 99th percentile of `repeats` runs of `call`, in µs.
async fn timed<F: AsyncFnMut() -> usize>(repeats: usize, mut call: F) -> (f64, f64) {
    // A tenth more, untimed first: caches and plans warm.
    for _ in 0..repeats.div_ceil(10) {
        call().await;
    }
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let rows = call().await;
        samples.push(started.elapsed());
        assert!(rows > 0, "the call returned nothing");
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() / repeats as f64 * 1e6;
    let p99 = samples[(repeats * 99 / 100).min(repeats - 1)].as_secs_f64() * 1e6;
    (mean, p99)
}

/// The timings of one store at one size: first page, middle page, last page, one identity.
async fn measure(store: &impl IdentityDirectory, identities: usize, repeats: usize) -> [(f64, f64); 4] {
    let first = timed(repeats, async || {
        store.list_identities(None, PAGE).await.expect("page").len()
    })
    .await;
    let middle = timed(repeats, async || {
        store
            .list_identities(Some(user(identities / 2)), PAGE)
            .await
            .expect("page")
            .len()
    })
    .await;
    let last = timed(repeats, async || {
        store
            .list_identities(Some(user(identities - PAGE / 2)), PAGE)
            .await
            .expect("page")
            .len()
    })
    .await;
    let target = UserId::parse(&user(identities / 3)).expect("user");
    let one = timed(repeats, async || {
        usize::from(store.identity(&target).await.expect("identity").is_some())
    })
    .await;
    [first, middle, last, one]
}

fn report(store: &str, small: usize, large: usize, small_times: [(f64, f64); 4], large_times: [(f64, f64); 4]) {
    let names = [
        format!("first page of {PAGE}"),
        format!("middle page of {PAGE}"),
        format!("last page of {PAGE}"),
        "GetIdentity".to_owned(),
    ];
    for (name, (small_time, large_time)) in names.iter().zip(small_times.iter().zip(large_times)) {
        println!(
            "{store}: {name} at {large} identities: mean {:.0} µs, p99 {:.0} µs; at {small}: mean {:.0} µs; ratio {:.2}",
            large_time.0,
            large_time.1,
            small_time.0,
            large_time.0 / small_time.0
        );
    }
}

fn fill_sqlite(path: &std::path::Path, from: usize, to: usize) {
    let mut connection = rusqlite::Connection::open(path).expect("open raw");
    let transaction = connection.transaction().expect("begin");
    {
        let mut insert = transaction
            .prepare("INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES (?1, ?2, ?2, 0)")
            .expect("prepare");
        for index in from..to {
            insert
                .execute(rusqlite::params![user(index), key(index)])
                .expect("insert");
        }
    }
    transaction.commit().expect("commit");
}

async fn sqlite(small: usize, large: usize, repeats: usize) {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("ca.sqlite3");
    let store = SqliteStore::open(&path).expect("open");
    fill_sqlite(&path, 0, small);
    let small_times = measure(&store, small, repeats).await;
    let started = Instant::now();
    fill_sqlite(&path, small, large);
    eprintln!(
        "sqlite: {large} identities inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let large_times = measure(&store, large, repeats).await;
    report("embedded store", small, large, small_times, large_times);
}

async fn postgres_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL (E2EE_CA_TEST_POSTGRES_URL)");
    tokio::spawn(connection);
    client
}

async fn fill_postgres(client: &tokio_postgres::Client, from: usize, to: usize) {
    let (from, to) = (i64::try_from(from).expect("size"), i64::try_from(to).expect("size") - 1);
    client
        .execute(
            "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at)
             SELECT 'user' || lpad(n::text, 8, '0'), sha256(int8send(n)), sha256(int8send(n)), now()
             FROM generate_series($1::bigint, $2::bigint) AS n",
            &[&from, &to],
        )
        .await
        .expect("bulk insert");
    client.batch_execute("ANALYZE identities").await.expect("analyze");
}

async fn postgres(small: usize, large: usize, repeats: usize) {
    let maintenance = std::env::var("E2EE_CA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("e2ee_ca_bench_{}", hex::encode(rand::random::<[u8; 6]>()));
    let admin = postgres_client(&maintenance).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut connection: tokio_postgres::Config = maintenance.parse().expect("URL");
    connection.dbname(&name);
    let store = PostgresStore::connect(&PostgresLocation {
        connection: connection.clone(),
        pool_size: 4,
        timeout: Duration::from_secs(30),
    })
    .await
    .expect("open");
    let (client, task) = connection.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(task);
    fill_postgres(&client, 0, small).await;
    let small_times = measure(&store, small, repeats).await;
    let started = Instant::now();
    fill_postgres(&client, small, large).await;
    eprintln!(
        "postgres: {large} identities inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let large_times = measure(&store, large, repeats).await;
    report("PostgreSQL", small, large, small_times, large_times);
    drop(store);
    drop(client);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let large: usize = arguments
        .first()
        .map_or(1_000_000, |value| value.parse().expect("IDENTITIES"));
    let repeats: usize = arguments.get(1).map_or(200, |value| value.parse().expect("REPEATS"));
    let small = 1000.min(large);
    sqlite(small, large, repeats).await;
    postgres(small, large, repeats).await;
}
