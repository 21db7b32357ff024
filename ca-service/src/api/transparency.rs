//! The `Transparency` service: checkpoints, proofs and the entry export, from a store it can only
//! read (`LogReader`: no sequencing method is within its reach).
//!
//! `ExportEntries` is pulled, not pushed: the next message is read from the store only when tonic
//! asks for it, which it does once hyper has handed the previous one to HTTP/2. A reader that stops
//! reading therefore pins what hyper and h2 hold for its stream and nothing else: the message h2
//! queued beyond the peer's flow-control window and the one hyper took while waiting for window
//! (two of at most `EXPORT_MESSAGE_BYTES` each); h2 itself queues at most 400 KiB per stream
//! (hyper's server default) for a peer whose socket does not drain. The reader's own HTTP/2 windows
//! buffer on the reader's side. At most `ExportLimits::max_streams` exports run at once
//! (RESOURCE_EXHAUSTED beyond), and an export that makes no progress for `ExportLimits::idle` is
//! ended with DEADLINE_EXCEEDED, which frees its place at once; what hyper and h2 still hold for it
//! goes when its reader reads on or its connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use e2ee_ca_proto::v1::transparency_server::Transparency;
use e2ee_ca_proto::v1::{
    ExportEntriesRequest, ExportEntriesResponse, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetInclusionProofRequest, GetInclusionProofResponse,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status};

use super::principal::principal;
use super::status::{inconsistent_log, proof_status, store_status};
use crate::transparency::{LogReader, StoredCheckpoint};

/// Most entry bytes in one `ExportEntries` message; a message always holds at least one entry, so
/// an entry larger than this is sent alone. Two messages are what a stalled reader pins (module
/// docs), and 32 KiB still holds about 90 entries of a typical 350 bytes, so the cost per message
/// (a store read, 5 bytes of gRPC framing) stays small next to the entries.
const EXPORT_MESSAGE_BYTES: usize = 32 * 1024;

/// Most entries one store read asks for.
const EXPORT_READ_ENTRIES: u64 = 256;

/// The entry size assumed before any was read: above the largest entry the CA writes (a
/// revocation listing 64 serials and a 512-byte reason), so the first read fits the budget.
const FIRST_ENTRY_GUESS: usize = 4096;

/// Protobuf framing per entry in a message: its tag and a length of up to three bytes.
const ENTRY_FRAMING: usize = 4;

/// How many exports run at once, and how long one may make no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// Exports served at once; one more is RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// An export that neither hands a message to its reader nor reads the store for this long is
    /// ended with DEADLINE_EXCEEDED.
    pub idle: Duration,
}

/// The `Transparency` service: checkpoints and proofs from the log store.
pub struct TransparencyService<L> {
    store: Arc<L>,
    limits: ExportLimits,
    /// One permit per running export.
    exports: Arc<Semaphore>,
}

impl<L> TransparencyService<L> {
    /// Serves the log in `store`, exporting within `limits`.
    pub fn new(store: Arc<L>, limits: ExportLimits) -> TransparencyService<L> {
        TransparencyService {
            store,
            limits,
            exports: Arc::new(Semaphore::new(limits.max_streams)),
        }
    }
}

impl<L: LogReader> TransparencyService<L> {
    /// The latest checkpoint; proofs are only served up to its size (never against an unsigned tree).
    async fn signed(&self) -> Result<StoredCheckpoint, Status> {
        self.store
            .latest_checkpoint()
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::unavailable("the audit log has no signed checkpoint yet; retry shortly"))
    }
}

/// Checks `size <= signed`, naming the field.
fn within_signed(field: &str, size: u64, signed: u64) -> Result<(), Status> {
    if size > signed {
        return Err(Status::invalid_argument(format!(
            "{field} {size} is beyond the latest signed checkpoint (size {signed}); fetch GetCheckpoint first"
        )));
    }
    Ok(())
}

/// One export between messages: where it is, and the line to its watchdog. It holds no entry while
/// its reader is not asking for one.
struct Export<L> {
    store: Arc<L>,
    /// The next index to send.
    next: u64,
    /// One past the last index to send.
    end: u64,
    /// The largest entry of the last read, which sizes the next one.
    largest_entry: usize,
    /// Ticked on every step; dropped with the export, which tells the watchdog it ended.
    progress: watch::Sender<()>,
    /// Set by the watchdog when it ended the export for idling.
    timed_out: Arc<AtomicBool>,
    idle: Duration,
}

impl<L: LogReader> Export<L> {
    /// The next message: entries from `next` while they fit in `EXPORT_MESSAGE_BYTES`, at least
    /// one. Entries read past the budget are dropped and read again for the next message.
    async fn next_message(mut self) -> (Result<ExportEntriesResponse, Status>, Export<L>) {
        let start = self.next;
        let mut entries = Vec::new();
        let mut bytes = 0;
        while self.next < self.end && bytes < EXPORT_MESSAGE_BYTES {
            let room = EXPORT_MESSAGE_BYTES - bytes;
            let fitting = (room / self.largest_entry.max(1)).max(1) as u64;
            let count = fitting.min(EXPORT_READ_ENTRIES).min(self.end - self.next);
            let read = match self.store.entries(self.next, self.next + count).await {
                Ok(read) if read.len() as u64 == count => read,
                Ok(_) => {
                    return (
                        Err(Status::internal("the CA's log store is inconsistent; export stopped")),
                        self,
                    );
                }
                Err(error) => return (Err(store_status(error)), self),
            };
            self.progress.send_replace(());
            self.largest_entry = read.iter().map(Vec::len).max().unwrap_or(0) + ENTRY_FRAMING;
            for entry in read {
                let size = entry.len() + ENTRY_FRAMING;
                if !entries.is_empty() && bytes + size > EXPORT_MESSAGE_BYTES {
                    return (Ok(ExportEntriesResponse { start, entries }), self);
                }
                bytes += size;
                entries.push(entry);
                self.next += 1;
            }
        }
        (Ok(ExportEntriesResponse { start, entries }), self)
    }

    fn idle_status(&self) -> Status {
        Status::deadline_exceeded(format!(
            "the export made no progress for {} s and was ended; read the stream continuously, and export \
             again from the first index you lack",
            self.idle.as_secs()
        ))
    }
}

type NextMessage<L> = Pin<Box<dyn Future<Output = (Result<ExportEntriesResponse, Status>, Export<L>)> + Send>>;

/// The `ExportEntries` response stream: reads the next message only when polled for it.
struct ExportStream<L> {
    /// The export between messages; `None` while a message is being read, and after the end.
    export: Option<Export<L>>,
    /// The message being read.
    reading: Option<NextMessage<L>>,
}

impl<L: LogReader> tokio_stream::Stream for ExportStream<L> {
    type Item = Result<ExportEntriesResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(reading) = &mut this.reading {
                let (message, export) = std::task::ready!(reading.as_mut().poll(context));
                this.reading = None;
                // A failed read ends the export (dropping it frees its place); after a message the
                // export is kept until its reader asks past the end, so a reader stalled on the
                // last message holds its place like any other.
                if message.is_ok() {
                    export.progress.send_replace(());
                    this.export = Some(export);
                }
                return Poll::Ready(Some(message));
            }
            let Some(export) = this.export.take() else {
                return Poll::Ready(None);
            };
            if export.timed_out.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(export.idle_status())));
            }
            if export.next >= export.end {
                return Poll::Ready(None);
            }
            // The reader asked for another message: progress.
            export.progress.send_replace(());
            this.reading = Some(Box::pin(export.next_message()));
        }
    }
}

/// Holds an export's place until the export ends (its `progress` sender is dropped: the last
/// message was taken, a read failed, or the reader went away and hyper dropped the stream) or
/// makes no progress for `idle`: then it marks the export timed out, and frees the place at once.
async fn watch_export(
    place: OwnedSemaphorePermit,
    mut progress: watch::Receiver<()>,
    timed_out: Arc<AtomicBool>,
    idle: Duration,
) {
    loop {
        match tokio::time::timeout(idle, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_ended)) => break,
            Err(_idle) => {
                timed_out.store(true, Ordering::Release);
                break;
            }
        }
    }
    drop(place);
}

#[tonic::async_trait]
impl<L: LogReader> Transparency for TransparencyService<L> {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        principal(&request)?;
        let checkpoint = self.signed().await?;
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: checkpoint.note,
            tree_size: checkpoint.size,
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("tree_size", request.tree_size, signed.size)?;
        if request.leaf_index >= request.tree_size {
            return Err(Status::invalid_argument(format!(
                "leaf_index {} is not below tree_size {}",
                request.leaf_index, request.tree_size
            )));
        }
        let hashes = crate::transparency::inclusion_proof(self.store.as_ref(), request.leaf_index, request.tree_size)
            .await
            .map_err(proof_status)?;
        let entry = self
            .store
            .entries(request.leaf_index, request.leaf_index + 1)
            .await
            .map_err(store_status)?
            .pop()
            .ok_or_else(inconsistent_log)?;
        Ok(Response::new(GetInclusionProofResponse {
            leaf_index: request.leaf_index,
            tree_size: request.tree_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
            entry,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("new_size", request.new_size, signed.size)?;
        if request.old_size > request.new_size {
            return Err(Status::invalid_argument(format!(
                "old_size {} is larger than new_size {}",
                request.old_size, request.new_size
            )));
        }
        let hashes = crate::transparency::consistency_proof(self.store.as_ref(), request.old_size, request.new_size)
            .await
            .map_err(proof_status)?;
        Ok(Response::new(GetConsistencyProofResponse {
            old_size: request.old_size,
            new_size: request.new_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }

    type ExportEntriesStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ExportEntriesResponse, Status>> + Send + 'static>>;

    async fn export_entries(
        &self,
        request: Request<ExportEntriesRequest>,
    ) -> Result<Response<Self::ExportEntriesStream>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        if request.start >= request.end {
            return Err(Status::invalid_argument(format!(
                "start {} is not below end {}",
                request.start, request.end
            )));
        }
        let place = Arc::clone(&self.exports).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} export streams are already open, the limit (transparency.max_export_streams); retry \
                 later",
                self.limits.max_streams
            ))
        })?;
        let signed = self.signed().await?;
        within_signed("end", request.end, signed.size)?;
        let (progress, watched) = watch::channel(());
        let timed_out = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_export(place, watched, Arc::clone(&timed_out), self.limits.idle));
        let export = Export {
            store: Arc::clone(&self.store),
            next: request.start,
            end: request.end,
            largest_entry: FIRST_ENTRY_GUESS,
            progress,
            timed_out,
            idle: self.limits.idle,
        };
        Ok(Response::new(Box::pin(ExportStream {
            export: Some(export),
            reading: None,
        })))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::storage::StoreError;
    use crate::transparency::{LogHead, NodeKey};
    use tlog::merkle::Hash;

    /// A log of the given entries; only `entries` is read by an export.
    struct Entries(Vec<Vec<u8>>);

    impl LogReader for Entries {
        async fn log_head(&self) -> Result<LogHead, StoreError> {
            Err(StoreError::Unavailable("not read by an export".to_owned()))
        }

        async fn subtree_hashes(&self, _keys: Vec<NodeKey>) -> Result<Vec<Option<Hash>>, StoreError> {
            Err(StoreError::Unavailable("not read by an export".to_owned()))
        }

        async fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
            Ok(self.0[start as usize..end as usize].to_vec())
        }

        async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
            Ok(None)
        }
    }

    /// An export of `[start, end)` of `entries` holding a place of `places`, and that semaphore.
    fn export(
        entries: Vec<Vec<u8>>,
        start: u64,
        end: u64,
        places: usize,
        idle: Duration,
    ) -> (ExportStream<Entries>, Arc<Semaphore>) {
        let semaphore = Arc::new(Semaphore::new(places));
        let place = Arc::clone(&semaphore).try_acquire_owned().expect("a free place");
        let (progress, watched) = watch::channel(());
        let timed_out = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_export(place, watched, Arc::clone(&timed_out), idle));
        let export = Export {
            store: Arc::new(Entries(entries)),
            next: start,
            end,
            largest_entry: FIRST_ENTRY_GUESS,
            progress,
            timed_out,
            idle,
        };
        let stream = ExportStream {
            export: Some(export),
            reading: None,
        };
        (stream, semaphore)
    }

    /// Every message of `stream`: contiguous from `start`, never empty, within the byte budget
    /// unless it is one entry; returns the entries in order.
    async fn check_messages(mut stream: ExportStream<Entries>, start: u64) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message.expect("a message");
            assert_eq!(
                message.start,
                start + received.len() as u64,
                "messages follow each other"
            );
            assert!(!message.entries.is_empty(), "every message holds an entry");
            let bytes: usize = message.entries.iter().map(|entry| entry.len() + ENTRY_FRAMING).sum();
            assert!(
                bytes <= EXPORT_MESSAGE_BYTES || message.entries.len() == 1,
                "{bytes} bytes in {} entries",
                message.entries.len()
            );
            received.extend(message.entries);
        }
        received
    }

    #[tokio::test]
    async fn messages_are_bounded_by_bytes_and_hold_every_entry_once() {
        let idle = Duration::from_secs(30);
        // Realistic entries (about 350 bytes), then sizes that change mid-stream, and an entry
        // larger than the whole budget, which is sent alone.
        let small: Vec<Vec<u8>> = (0..3000_u32)
            .map(|index| vec![b'a' + (index % 26) as u8; 350])
            .collect();
        let mut mixed = small[..500].to_vec();
        mixed.extend((0..40_u32).map(|index| vec![b'm'; 3000 + index as usize]));
        mixed.push(vec![b'L'; 3 * EXPORT_MESSAGE_BYTES]);
        mixed.extend(small[..700].iter().cloned());
        for (entries, start) in [(small, 0), (mixed.clone(), 0), (mixed, 499)] {
            let end = entries.len() as u64;
            let (stream, semaphore) = export(entries.clone(), start, end, 1, idle);
            assert_eq!(check_messages(stream, start).await, entries[start as usize..]);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(semaphore.available_permits(), 1, "a finished export frees its place");
        }
        let (mut stream, _) = export(vec![vec![0; 350]; 3000], 0, 3000, 1, idle);
        let first = stream.next().await.expect("a message").expect("entries");
        assert!(
            first.entries.len() > 80,
            "a message is filled up to the budget: {}",
            first.entries.len()
        );
    }

    #[tokio::test]
    async fn an_idle_export_frees_its_place_and_ends_with_deadline_exceeded() {
        let idle = Duration::from_millis(200);
        let (mut stream, semaphore) = export(vec![vec![0; 350]; 3000], 0, 3000, 1, idle);
        stream.next().await.expect("a message").expect("entries");
        assert_eq!(semaphore.available_permits(), 0, "a running export holds its place");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            semaphore.available_permits(),
            1,
            "an idle export's place is freed while it stalls"
        );
        let status = stream.next().await.expect("an item").expect_err("ended");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(stream.next().await.is_none(), "nothing follows the error");
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_frees_its_place() {
        let (mut stream, semaphore) = export(vec![vec![0; 350]; 3000], 0, 3000, 1, Duration::from_secs(30));
        stream.next().await.expect("a message").expect("entries");
        drop(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(semaphore.available_permits(), 1);
    }
}
