//! `ExportEntries` against readers that never read: 200 stalled streams over real mTLS connections
//! pin a bounded amount of the real `ca-service` process's memory (VmHWM and VmRSS from
//! /proc/PID/status), the stream beyond `transparency.max_export_streams` is RESOURCE_EXHAUSTED, a
//! reader that goes away frees its place, and an idle stream is ended after
//! `transparency.export_idle_seconds` with DEADLINE_EXCEEDED, freeing its place too.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::{Duration, Instant};

use common::{DevServer, UserKey, UserKeyPair};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use e2ee_ca_proto::v1::{ExportEntriesRequest, ExportEntriesResponse, GetCheckpointRequest, IssueCertificateRequest};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::codec::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Stalled readers, and the server's cap on concurrent exports in this test.
const STALLED: usize = 200;
/// Entries in the log: a few thousand refusals of about 350 bytes, as an audit log holds.
const ENTRIES: u64 = 3000;
/// The idle timeout the test's server runs with.
const IDLE_SECONDS: u64 = 8;
/// The growth 200 stalled exports may cause beyond their connections' cost: 224 KiB each. Before the
/// byte-bounded, pulled export, each stalled stream pinned a producer's chunk, four queued ones and
/// what hyper and h2 held, chunks of 256 entries (measured: 686 KiB per stream here, 134 MiB in
/// all); now each pins the two messages hyper and h2 hold (2 × 32 KiB, in buffers of up to twice
/// that) and the write buffers its connection grew to send them (measured: 142 KiB per stream).
const EXPORTS_BOUND_KIB: u64 = 200 * 224;

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `VmRSS` of `pid` once it has changed by less than 256 KiB over a quarter of a second (at most 5 s).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = memory_kib(pid).1;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = memory_kib(pid).1;
        if now.abs_diff(last) < 256 {
            return now;
        }
        last = now;
    }
    last
}

/// An auditor's connection that advertises HTTP/2's default windows (64 KiB per stream and per
/// connection) instead of hyper's 2 and 5 MiB, so that what is not yet sent waits on the server, as
/// an attacker who wants the server to buffer would arrange.
async fn stalling_channel(server: &DevServer) -> Channel {
    let (ca, certificate, key) = server.tls_files("auditor").expect("the dev server serves mTLS");
    let read = |path: std::path::PathBuf| std::fs::read(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(certificate), read(key)));
    Endpoint::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect as auditor")
}

async fn open_export(channel: Channel, end: u64) -> Result<Streaming<ExportEntriesResponse>, tonic::Status> {
    TransparencyClient::new(channel)
        .export_entries(ExportEntriesRequest { start: 0, end })
        .await
        .map(tonic::Response::into_inner)
}

/// Reads `stream` to its end: the entries received, and the status it ended with.
async fn drain(stream: &mut Streaming<ExportEntriesResponse>) -> (u64, Result<(), tonic::Status>) {
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert_eq!(message.start, received, "messages follow each other");
                assert!(!message.entries.is_empty(), "every message holds an entry");
                received += message.entries.len() as u64;
            }
            Ok(None) => return (received, Ok(())),
            Err(status) => return (received, Err(status)),
        }
    }
}

/// Fills the log with `count` issuance refusals (a CSR that is not PEM: one entry each, no HSM
/// signature), 32 at a time, and returns the size of a signed checkpoint covering them.
async fn fill_log(server: &DevServer, count: u64) -> u64 {
    let channel = server.connect_as("sync-server").await;
    let mut refusals = JoinSet::new();
    for task in 0..32 {
        let mut client = IdentityClient::new(channel.clone());
        refusals.spawn(async move {
            for _ in (task..count).step_by(32) {
                let refused = client
                    .issue_certificate(IssueCertificateRequest {
                        user_id: "filler".to_owned(),
                        csr_pem: "not a CSR".to_owned(),
                        wait_for_checkpoint: false,
                    })
                    .await
                    .expect_err("refused");
                assert_eq!(refused.code(), Code::InvalidArgument, "{}", refused.message());
            }
        });
    }
    while let Some(done) = refusals.join_next().await {
        done.expect("refusal task");
    }
    let mut transparency = server.transparency().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let size = transparency
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .map_or(0, |response| response.into_inner().tree_size);
        if size >= count {
            return size;
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {count} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_export_readers_are_bounded_capped_and_timed_out() {
    let started = Instant::now();
    let directory = tempfile::tempdir().expect("tempdir");
    let config = DevServer::start(directory.path(), "ecdsa-p256")
        .stop()
        .join("ca-service.toml");
    let mut text = std::fs::read_to_string(&config).expect("dev config");
    text.push_str(&format!(
        "\n[transparency]\nmax_export_streams = {STALLED}\nexport_idle_seconds = {IDLE_SECONDS}\n"
    ));
    std::fs::write(&config, text).expect("config");
    let server = DevServer::start_with_config(&config);
    // One issuance first, so that the log holds a realistic entry besides the refusals.
    {
        let key = UserKeyPair::generate(UserKey::EcP256);
        common::issue(&mut server.client().await, "alice", &key.csr("alice"))
            .await
            .expect("issued");
    }
    let size = fill_log(&server, ENTRIES).await;
    let pid = server.pid();
    let (_, rss_before) = memory_kib(pid);

    // 1. 200 auditors connect, each on its own connection, and read a checkpoint: what their
    //    connections cost the server.
    let mut channels = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let channel = stalling_channel(&server).await;
        TransparencyClient::new(channel.clone())
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .expect("checkpoint");
        channels.push(channel);
    }
    let rss_connected = settled_rss(pid).await;
    // 2. Each opens an export of the whole log and never reads.
    let mut opening = JoinSet::new();
    for channel in channels {
        opening.spawn(async move {
            let stream = open_export(channel.clone(), size)
                .await
                .expect("admitted below the cap");
            (channel, stream)
        });
    }
    let mut stalled = Vec::with_capacity(STALLED);
    while let Some(opened) = opening.join_next().await {
        stalled.push(opened.expect("open task"));
    }
    let opened_at = Instant::now();
    let rss_stalled = settled_rss(pid).await;
    let (peak, _) = memory_kib(pid);
    let exports = peak.saturating_sub(rss_connected);
    println!(
        "{STALLED} stalled readers of {size} entries: VmRSS {rss_before} KiB before, {rss_connected} KiB once \
         connected, {rss_stalled} KiB while stalled; VmHWM {peak} KiB: the exports grew it by {exports} KiB \
         ({} KiB per reader), {} KiB with the connections",
        exports / STALLED as u64,
        peak.saturating_sub(rss_before),
    );
    assert!(
        exports < EXPORTS_BOUND_KIB,
        "{STALLED} stalled exports grew the server by {exports} KiB (bound {EXPORTS_BOUND_KIB} KiB)"
    );

    // 3. The next one is over the cap.
    let extra = stalling_channel(&server).await;
    let refused = open_export(extra.clone(), size).await.expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert!(
        refused.message().contains(&format!("{STALLED} export streams")),
        "the refusal names the limit: {}",
        refused.message()
    );

    // 4. A reader that goes away frees its place: the next export is admitted and completes.
    drop(stalled.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut admitted = loop {
        match open_export(extra.clone(), size).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("a freed place is not reused: {status}"),
        }
    };
    let (received, ended) = drain(&mut admitted).await;
    assert_eq!((received, ended.map_err(|status| status.code())), (size, Ok(())));

    // 5. The stalled streams are ended once idle for the timeout: their places are free again,
    //    and a stalled reader that reads now gets what was in flight, then DEADLINE_EXCEEDED.
    assert!(
        opened_at.elapsed() < Duration::from_secs(IDLE_SECONDS),
        "steps 3 and 4 outlasted the idle timeout: the place reused in step 4 may have been freed by it"
    );
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS + 2)).await;
    let fresh: Vec<Streaming<ExportEntriesResponse>> = {
        let mut fresh = Vec::new();
        for _ in 0..3 {
            fresh.push(
                open_export(extra.clone(), size)
                    .await
                    .expect("places freed by the timeout"),
            );
        }
        fresh
    };
    drop(fresh);
    let (_, mut first) = stalled.pop().expect("a stalled reader");
    let (received, ended) = drain(&mut first).await;
    let status = ended.expect_err("an idle stream ends with an error");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert!(
        status.message().contains(&format!("no progress for {IDLE_SECONDS} s")),
        "{}",
        status.message()
    );
    assert!(received < size, "the idle stream was cut short ({received} of {size})");
    let (peak_end, rss_end) = memory_kib(pid);
    println!(
        "after the timeout: VmRSS {rss_end} KiB, VmHWM {peak_end} KiB; test ran {:?}",
        started.elapsed()
    );
    drop(stalled);
}
