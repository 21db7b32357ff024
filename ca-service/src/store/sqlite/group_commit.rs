//! The embedded store's group committer: one thread that writes whatever is queued in one
//! transaction, each write in its own savepoint, so that one fsync makes a whole group durable.
//!
//! A write is any `GroupWrite`: a new kind of write (an approval, a backup, a revocation) is one
//! new type, written with its audit entry inside its savepoint, and nothing here changes.
//! A write the constraints refuse (`Integrity`, or an outcome that keeps nothing) rolls back its
//! own savepoint and the rest of the group commits; any other failure, or a failed `COMMIT`,
//! answers every write of the group with that error and writes nothing. No caller hears back
//! before the `COMMIT` that holds its write has returned.
//!
//! Once the sequencer has handed the log head over (`transparency::inline`), a group also
//! sequences what is pending, in a savepoint of the same transaction, and answers each write with
//! its entry's log index: at once in a group holding a write whose caller waits for its index (an
//! issuance), and otherwise at most `APPEND_SEQUENCING_DELAY` after the oldest entry it left
//! pending, so that one sequencing covers many groups of refusals. While every HSM session is
//! busy, a group holding an issuance is held open briefly for the next signed certificates
//! (`hold_for_more`): the HSM sets the pace then, so the wait costs no throughput, and each commit
//! it saves is CPU that a software token needs for signing.

use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::log::sequence_within;
use super::store_error;
use crate::audit::LogEntryRef;
use crate::issuer::SigningQueue;
use crate::storage::StoreError;
use crate::transparency::inline::InlineSequencing;
use crate::transparency::{LogHead, SequenceOutcome};

/// Most writes in one group transaction.
const MAX_GROUP_COMMIT: usize = 256;

/// How long the writer may leave entries that nobody waits for (refusals) unsequenced.
const APPEND_SEQUENCING_DELAY: Duration = Duration::from_millis(10);

/// How long a group holding an issuance may be held open for more while every HSM session is busy.
pub(super) const SATURATED_GROUP_HOLD: Duration = Duration::from_millis(6);

/// How often a held group looks again whether every HSM session is still busy.
const SATURATION_CHECK: Duration = Duration::from_micros(500);

/// One kind of write the group committer runs inside a group's transaction, in a savepoint of its
/// own.
pub(super) trait GroupWrite: Send + 'static {
    /// What the caller is answered with.
    type Output: Send + 'static;

    /// True when the caller waits for its entry's log index (an issuance): a group holding such a
    /// write is sequenced in its own transaction, and may be held while the HSM is saturated.
    fn awaits_index(&self) -> bool {
        false
    }

    /// True when the write adds an audit entry (every write but a checkpoint's): a group that added
    /// one owes a sequencing, at the latest `APPEND_SEQUENCING_DELAY` later.
    fn adds_entry(&self) -> bool {
        true
    }

    /// Writes inside the open transaction. `Err(StoreError::Integrity)` refuses this write alone;
    /// any other error fails the whole group.
    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError>;

    /// False for an outcome that refuses the write without an error (a pin conflict): its
    /// savepoint is rolled back.
    fn keeps(_output: &Self::Output) -> bool {
        true
    }

    /// The audit entry the outcome holds, to be given its log index if the group sequenced it.
    fn entry(_output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        None
    }
}

/// A message for the group committer: a write, or a nudge (run a group even with nothing to
/// write, so that pending entries are sequenced).
pub(super) enum Message {
    Write(Box<dyn Pending>),
    Nudge,
}

impl Message {
    /// `write`, answered through `reply`.
    pub(super) fn write<W: GroupWrite>(write: W, reply: oneshot::Sender<Result<W::Output, StoreError>>) -> Message {
        Message::Write(Box::new(Queued {
            awaits_index: write.awaits_index(),
            adds_entry: write.adds_entry(),
            write: Some(write),
            outcome: None,
            reply,
        }))
    }
}

/// A queued write, type-erased, through its life in a group: written, then answered or failed.
pub(super) trait Pending: Send {
    /// See `GroupWrite::awaits_index`.
    fn awaits_index(&self) -> bool;
    /// See `GroupWrite::adds_entry`.
    fn adds_entry(&self) -> bool;
    /// Writes it (once) inside the transaction, keeping the outcome until the group ends.
    fn write(&mut self, connection: &Connection);
    /// True when its savepoint holds something to commit.
    fn keeps(&self) -> bool;
    /// The error that must fail the whole group, if its write failed with one.
    fn group_error(&self) -> Option<StoreError>;
    /// Answers with its own outcome (the group committed), with its entry's log index if
    /// `assignments` (in entry id order) holds it.
    fn answer(self: Box<Self>, assignments: &[(i64, u64)]);
    /// Answers with the group's error: nothing of the group was written.
    fn fail(self: Box<Self>, error: StoreError);
}

struct Queued<W: GroupWrite> {
    awaits_index: bool,
    adds_entry: bool,
    write: Option<W>,
    outcome: Option<Result<W::Output, StoreError>>,
    reply: oneshot::Sender<Result<W::Output, StoreError>>,
}

impl<W: GroupWrite> Pending for Queued<W> {
    fn awaits_index(&self) -> bool {
        self.awaits_index
    }

    fn adds_entry(&self) -> bool {
        self.adds_entry
    }

    fn write(&mut self, connection: &Connection) {
        if let Some(write) = self.write.take() {
            self.outcome = Some(write.write(connection));
        }
    }

    fn keeps(&self) -> bool {
        matches!(&self.outcome, Some(Ok(output)) if W::keeps(output))
    }

    fn group_error(&self) -> Option<StoreError> {
        match &self.outcome {
            Some(Err(error)) if !matches!(error, StoreError::Integrity(_)) => Some(error.clone()),
            _ => None,
        }
    }

    fn answer(self: Box<Self>, assignments: &[(i64, u64)]) {
        let mut outcome = self
            .outcome
            .unwrap_or_else(|| Err(StoreError::Corrupt("a grouped write was answered unwritten".to_owned())));
        if let Ok(output) = &mut outcome
            && let Some(entry) = W::entry(output)
        {
            entry.leaf_index = assignments
                .binary_search_by_key(&entry.entry_id, |(entry_id, _)| *entry_id)
                .ok()
                .map(|position| assignments[position].1);
        }
        // A caller that gave up waiting is not an error: its write stays committed, as it would
        // have without grouping.
        let _ = self.reply.send(outcome);
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// The issuances at the HSM as the writer sees them (`SqliteStore::follow_signing`), and how long
/// it may hold a group for more of them.
#[derive(Debug, Default)]
pub(super) struct SigningFollower {
    followed: OnceLock<(Arc<SigningQueue>, Duration)>,
}

impl SigningFollower {
    /// Follows `queue`, holding a group at most `hold`; a second call is ignored.
    pub(super) fn follow(&self, queue: Arc<SigningQueue>, hold: Duration) {
        let _ = self.followed.set((queue, hold));
    }

    fn saturated(&self) -> bool {
        self.followed.get().is_some_and(|(queue, _)| queue.saturated())
    }

    fn hold(&self) -> Duration {
        self.followed.get().map_or(Duration::ZERO, |(_, hold)| *hold)
    }
}

/// Starts the group committer's thread over `connection`; it ends when every sender is dropped.
pub(super) fn start(
    connection: Arc<Mutex<Connection>>,
    inline: Arc<InlineSequencing>,
    signing: Arc<SigningFollower>,
) -> Result<mpsc::Sender<Message>, StoreError> {
    let (writes, queue) = mpsc::channel();
    std::thread::Builder::new()
        .name("sqlite-group-commit".to_owned())
        .spawn(move || run(connection, queue, inline, signing))
        .map_err(|error| StoreError::Unavailable(format!("cannot start the store's writer thread: {error}")))?;
    Ok(writes)
}

/// The group committer's loop: takes what is waiting (at most `MAX_GROUP_COMMIT` writes), writes
/// it in one transaction, answers, and starts again (module docs).
fn run(
    connection: Arc<Mutex<Connection>>,
    messages: mpsc::Receiver<Message>,
    inline: Arc<InlineSequencing>,
    signing: Arc<SigningFollower>,
) {
    // When the oldest entry committed but left unsequenced was committed.
    let mut owed_since: Option<Instant> = None;
    loop {
        let first = match owed_since {
            None => match messages.recv() {
                Ok(message) => message,
                Err(_) => break,
            },
            Some(since) => match messages.recv_timeout(APPEND_SEQUENCING_DELAY.saturating_sub(since.elapsed())) {
                Ok(message) => message,
                // Time to sequence what was left: a group with nothing to write does it.
                Err(mpsc::RecvTimeoutError::Timeout) => Message::Nudge,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut nudged = false;
        let mut group = Vec::new();
        let mut take = |message: Message, group: &mut Vec<Box<dyn Pending>>| match message {
            Message::Write(write) => group.push(write),
            Message::Nudge => nudged = true,
        };
        take(first, &mut group);
        while group.len() < MAX_GROUP_COMMIT {
            match messages.try_recv() {
                Ok(message) => take(message, &mut group),
                Err(_) => break,
            }
        }
        hold_for_more(&messages, &mut group, &mut take, &signing);
        let sequence = nudged
            || owed_since.is_some_and(|since| since.elapsed() >= APPEND_SEQUENCING_DELAY)
            || group.iter().any(|write| write.awaits_index());
        let added_entries = group.iter().any(|write| write.adds_entry());
        let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        commit_group(&mut connection, group, sequence.then_some(&*inline));
        owed_since = match (sequence, inline.assignment()) {
            (true, _) | (false, None) => None,
            (false, Some(_)) if added_entries => owed_since.or_else(|| Some(Instant::now())),
            (false, Some(_)) => owed_since,
        };
    }
}

/// While every HSM session is busy, keeps a group that holds an issuance open for the next signed
/// certificates, at most the hold time, so that one commit serves several. Stops as soon as a
/// session is free (holding on would leave the HSM idle) or the group is full.
fn hold_for_more(
    messages: &mpsc::Receiver<Message>,
    group: &mut Vec<Box<dyn Pending>>,
    take: &mut impl FnMut(Message, &mut Vec<Box<dyn Pending>>),
    signing: &SigningFollower,
) {
    if !group.iter().any(|write| write.awaits_index()) {
        return;
    }
    let until = Instant::now() + signing.hold();
    while group.len() < MAX_GROUP_COMMIT && signing.saturated() {
        let slice = until.saturating_duration_since(Instant::now()).min(SATURATION_CHECK);
        if slice.is_zero() {
            break;
        }
        match messages.recv_timeout(slice) {
            Ok(message) => take(message, group),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every store handle is gone: commit what is here; the loop then ends.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Writes `group` in one transaction, each write in its own savepoint; then, with `sequencing`
/// given and the log head handed over to it, sequences what is pending (the group's entries
/// included) in the same transaction. Answers every caller: with its own outcome and its entry's
/// log index once `COMMIT` returned, or with the error that stopped the group. A group of one
/// needs no savepoint: a refused write rolls the whole transaction back (unless entries were
/// sequenced).
pub(super) fn commit_group(
    connection: &mut Connection,
    group: Vec<Box<dyn Pending>>,
    sequencing: Option<&InlineSequencing>,
) {
    let assignment = sequencing.and_then(InlineSequencing::assignment);
    if group.is_empty() && assignment.is_none() {
        return;
    }
    let report = |head: LogHead, outcome: Result<SequenceOutcome, StoreError>| {
        if let Some(inline) = sequencing {
            inline.report(head, outcome);
        }
    };
    let transaction = match WriteTransaction::begin(connection) {
        Ok(transaction) => transaction,
        Err(error) => {
            let error = store_error(error);
            if let Some((head, _)) = assignment {
                report(head, Err(error.clone()));
            }
            group.into_iter().for_each(|write| write.fail(error.clone()));
            return;
        }
    };
    let savepoints = group.len() > 1;
    let mut written: Vec<Box<dyn Pending>> = Vec::with_capacity(group.len());
    let mut kept = 0;
    let mut writes = group.into_iter();
    let mut failure = None;
    while failure.is_none()
        && let Some(mut write) = writes.next()
    {
        if savepoints && let Err(error) = transaction.run("SAVEPOINT grouped_write") {
            let error = store_error(error);
            write.fail(error.clone());
            failure = Some(error);
            continue;
        }
        write.write(&transaction);
        failure = write.group_error();
        let keeps = write.keeps();
        if failure.is_none() && keeps {
            kept += 1;
        }
        if savepoints && failure.is_none() {
            // Refusals keep nothing: back to the savepoint, which RELEASE then drops either way.
            let ended = if keeps {
                transaction.run("RELEASE grouped_write")
            } else {
                transaction
                    .run("ROLLBACK TO grouped_write")
                    .and_then(|()| transaction.run("RELEASE grouped_write"))
            };
            failure = ended.map_err(store_error).err();
        }
        written.push(write);
    }
    let sequenced = match assignment {
        Some((head, max_entries)) if failure.is_none() => {
            let outcome = sequence_in_savepoint(&transaction, head, max_entries).unwrap_or_else(|error| {
                failure = Some(error.clone());
                Err(error)
            });
            Some((head, outcome))
        }
        _ => None,
    };
    let assignments = match &sequenced {
        Some((_, Ok(SequenceOutcome::Sequenced { assignments, .. }))) => assignments.clone(),
        _ => Vec::new(),
    };
    // Commit only what is worth keeping. After a failure nothing of the group stays, and a lone
    // refused write keeps nothing: dropping the transaction then rolls it back.
    let failure = match failure {
        None if kept > 0 || !assignments.is_empty() => transaction.commit().map_err(store_error).err(),
        failure => failure,
    };
    match (sequenced, &failure) {
        // Rolled back with the group: the head stays where it was, to be extended next time.
        (Some((_, Ok(SequenceOutcome::Sequenced { .. }))), Some(_)) | (None, _) => {}
        (Some((head, outcome)), _) => report(head, outcome),
    }
    match failure {
        None => written.into_iter().for_each(|write| write.answer(&assignments)),
        Some(error) => {
            written.into_iter().for_each(|write| write.fail(error.clone()));
            writes.for_each(|write| write.fail(error.clone()));
        }
    }
}

/// Sequences up to `max_entries` pending entries onto `head` inside the group's transaction, in a
/// savepoint: a failure or a moved head (the inner result) writes nothing of the sequencing and
/// leaves the group's own writes to commit. The outer error means the savepoint itself failed: the
/// transaction is in doubt and the group must fail.
fn sequence_in_savepoint(
    transaction: &WriteTransaction<'_>,
    head: LogHead,
    max_entries: usize,
) -> Result<Result<SequenceOutcome, StoreError>, StoreError> {
    transaction.run("SAVEPOINT sequencing").map_err(store_error)?;
    let outcome = sequence_within(transaction, head, max_entries);
    let ended = if matches!(outcome, Ok(SequenceOutcome::Sequenced { .. })) {
        transaction.run("RELEASE sequencing")
    } else {
        transaction
            .run("ROLLBACK TO sequencing")
            .and_then(|()| transaction.run("RELEASE sequencing"))
    };
    ended.map_err(store_error)?;
    Ok(outcome)
}

/// A `BEGIN IMMEDIATE` transaction whose control statements (`BEGIN`, `SAVEPOINT`, `RELEASE`,
/// `COMMIT`, `ROLLBACK`) are prepared once per connection and cached, where rusqlite's
/// `Transaction` parses each one every time. Rolls back when dropped uncommitted.
pub(super) struct WriteTransaction<'a> {
    connection: &'a Connection,
    open: bool,
}

impl<'a> WriteTransaction<'a> {
    pub(super) fn begin(connection: &'a Connection) -> rusqlite::Result<WriteTransaction<'a>> {
        run_cached(connection, "BEGIN IMMEDIATE")?;
        Ok(WriteTransaction { connection, open: true })
    }

    /// Runs one cached statement that returns no rows.
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        run_cached(self.connection, sql)
    }

    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        // A failed COMMIT leaves the transaction open: the drop then rolls it back.
        self.run("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // If the rollback fails the connection is broken, and the next BEGIN reports it.
            let _ = run_cached(self.connection, "ROLLBACK");
        }
    }
}

fn run_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    //! Group commit as a mechanism (hand-made groups, the saturated hold); what the store answers
    //! its callers is in `store::conformance`.

    use super::super::SqliteStore;
    use super::super::identities::{AppendWrite, IssuanceWrite};
    use super::super::test_support::{committed_entry, reports};
    use super::*;
    use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate};
    use crate::store::conformance::{certificate, event};
    use crate::transparency::inline::InlineReport;

    /// Queues an issuance for a hand-made group and returns where its answer arrives.
    fn issuance(
        group: &mut Vec<Box<dyn Pending>>,
        certificate: NewCertificate,
    ) -> oneshot::Receiver<Result<CommitOutcome, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let event = event(certificate.user_id.as_str());
        if let Message::Write(write) = Message::write(IssuanceWrite { certificate, event }, reply) {
            group.push(write);
        }
        answer
    }

    /// Queues a refusal's entry for a hand-made group.
    fn append(group: &mut Vec<Box<dyn Pending>>, name: &str) -> oneshot::Receiver<Result<LogEntryRef, StoreError>> {
        let (reply, answer) = oneshot::channel();
        if let Message::Write(write) = Message::write(AppendWrite { event: event(name) }, reply) {
            group.push(write);
        }
        answer
    }

    fn count(connection: &Connection, table: &str) -> i64 {
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
            .expect("count")
    }

    fn fresh_connection(directory: &tempfile::TempDir) -> Connection {
        let path = directory.path().join("ca.sqlite3");
        drop(SqliteStore::open(&path).expect("migrated"));
        Connection::open(&path).expect("open")
    }

    #[test]
    fn a_refused_write_in_a_group_rolls_back_alone() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut connection = fresh_connection(&directory);
        let mut group = Vec::new();
        let alice = issuance(&mut group, certificate("alice", 1, 1));
        // Same serial as alice's: its identity row, written first, must go too.
        let bob = issuance(&mut group, certificate("bob", 2, 1));
        let appended = append(&mut group, "refusal");
        // Alice's key, pinned earlier in the same group.
        let carol = issuance(&mut group, certificate("carol", 1, 3));
        commit_group(&mut connection, group, None);

        assert!(matches!(
            alice.blocking_recv().expect("answered"),
            Ok(CommitOutcome::Committed { renewal: false, .. })
        ));
        assert!(matches!(
            bob.blocking_recv().expect("answered"),
            Err(StoreError::Integrity(_))
        ));
        assert!(appended.blocking_recv().expect("answered").is_ok());
        assert_eq!(
            carol.blocking_recv().expect("answered").expect("no store error"),
            CommitOutcome::KeyPinnedElsewhere
        );
        assert_eq!(count(&connection, "identities"), 1, "only alice is pinned");
        assert_eq!(count(&connection, "certificates"), 1);
        assert_eq!(
            count(&connection, "audit_entries"),
            2,
            "alice's issuance and the refusal"
        );
    }

    #[test]
    fn a_failed_write_fails_its_whole_group_and_writes_nothing() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut connection = fresh_connection(&directory);
        let mut group = Vec::new();
        let appended = append(&mut group, "first");
        let alice = issuance(&mut group, certificate("alice", 1, 1));
        let bob = issuance(&mut group, certificate("bob", 2, 2));
        // Not a constraint: the store cannot write certificates at all.
        connection
            .execute_batch("ALTER TABLE certificates RENAME TO certificates_elsewhere")
            .expect("rename");
        commit_group(&mut connection, group, None);

        assert!(matches!(
            appended.blocking_recv().expect("answered"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            alice.blocking_recv().expect("answered"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(
            matches!(bob.blocking_recv().expect("answered"), Err(StoreError::Corrupt(_))),
            "the write after the failure is answered too"
        );
        assert_eq!(count(&connection, "identities"), 0);
        assert_eq!(
            count(&connection, "audit_entries"),
            0,
            "the append before the failure is rolled back"
        );
    }

    /// A store whose log head is handed over, following `signing` with a hold of `hold`.
    fn store_following(directory: &tempfile::TempDir, signing: &Arc<SigningQueue>, hold: Duration) -> SqliteStore {
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        store.inline.hand_over(LogHead::empty(), 100);
        store.signing.follow(Arc::clone(signing), hold);
        store
    }

    #[tokio::test]
    async fn while_every_hsm_session_is_busy_an_issuance_is_held_for_the_next_to_share_its_commit() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(1));
        let store = Arc::new(store_following(&directory, &signing, Duration::from_secs(30)));
        let busy = signing.enter();

        let commit = |name: &'static str, serial: u8| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { committed_entry(&store, certificate(name, serial, serial)).await })
        };
        let first = commit("alice", 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!first.is_finished(), "held while the only session is busy");
        let second = commit("bob", 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the next one joins the held group");

        let released = Instant::now();
        drop(busy);
        let first = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("answered once a session is free")
            .expect("task");
        let second = second.await.expect("task");
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "not kept for the whole hold"
        );
        match &reports(&store).await[..] {
            [InlineReport::Sequenced { assignments, .. }] => assert_eq!(
                *assignments,
                vec![(first.entry_id, 0), (second.entry_id, 1)],
                "one group, one sequencing for both"
            ),
            other => panic!("expected one batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_held_group_commits_when_its_hold_ends_though_every_session_stays_busy() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(1));
        let hold = Duration::from_millis(300);
        let store = store_following(&directory, &signing, hold);
        let _busy = signing.enter();

        let started = Instant::now();
        let entry = tokio::time::timeout(
            Duration::from_secs(10),
            committed_entry(&store, certificate("alice", 1, 1)),
        )
        .await
        .expect("answered after the hold");
        assert!(started.elapsed() >= hold, "held for the hold time");
        assert_eq!(entry.leaf_index, Some(0), "and sequenced in its group");
    }

    #[tokio::test]
    async fn nothing_is_held_while_a_session_is_free_nor_a_group_without_an_issuance() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(2));
        let store = store_following(&directory, &signing, Duration::from_secs(30));
        let _one_of_two = signing.enter();
        tokio::time::timeout(
            Duration::from_secs(5),
            committed_entry(&store, certificate("alice", 1, 1)),
        )
        .await
        .expect("a session is free: not held");

        let _two_of_two = signing.enter();
        tokio::time::timeout(Duration::from_secs(5), store.append_event(event("refused")))
            .await
            .expect("a refusal is not held")
            .expect("append");
    }

    #[tokio::test]
    async fn appends_nobody_waits_for_are_sequenced_after_the_delay() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        store.inline.hand_over(LogHead::empty(), 100);
        let started = Instant::now();
        let mut appended = Vec::new();
        for number in 0..3 {
            let entry = store
                .append_event(event(&format!("refused {number}")))
                .await
                .expect("append");
            if number == 0 {
                assert_eq!(entry.leaf_index, None, "a refusal does not wait for its index");
            }
            appended.push(entry.entry_id);
        }
        // Usually one batch for the three; on a slow disk the delay may pass between two appends.
        let mut sequenced = Vec::new();
        while sequenced.len() < appended.len() {
            for report in reports(&store).await {
                match report {
                    InlineReport::Sequenced { assignments, .. } => {
                        sequenced.extend(assignments.iter().map(|(entry_id, _)| *entry_id));
                    }
                    other => panic!("expected a batch, got {other:?}"),
                }
            }
        }
        assert_eq!(sequenced, appended, "sequenced in order, each once");
        assert!(started.elapsed() >= APPEND_SEQUENCING_DELAY, "not before the delay");
    }
}
