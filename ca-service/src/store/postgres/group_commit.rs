//! The PostgreSQL store's group committers: one task per kind of write takes what is queued and
//! commits it in one transaction of multi-row statements, so that concurrent callers share one
//! commit, and answers each caller after the commit that decided its outcome.
//!
//! A kind of write is a `GroupedWrite`: a new kind (an approval, a backup, a revocation) is one new
//! type with its group statements, and the queueing, bounds and fallback here stay as they are.
//! A group never holds two writes with a claim in common (two issuances for one user or one key:
//! the later one waits for the next group), so each outcome is the one the write would have had
//! alone in the group's place. Groups are committed one at a time: a group that waits for a lock
//! (another replica writing the same row at that moment) holds up the next, within the bound.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use super::{bounded_client, finish};
use crate::storage::StoreError;

/// One kind of write the group committer commits in groups.
pub(super) trait GroupedWrite: Send + Sync + Sized + 'static {
    /// What the caller is answered with.
    type Output: Send + 'static;
    /// What a write holds exclusively within one group (an issuance: its user and its key).
    type Claim: Eq + Hash + Send;

    /// Names the committer in errors.
    const NAME: &'static str;
    /// Most writes in one group.
    const MAX_GROUP: usize;
    /// Whether a group that the database refused while it still answered is committed again one
    /// write per transaction: for writes whose group can fail for a reason that is not each
    /// write's own (one issuance's serial collision, a deadlock with another replica's group).
    const RETRY_ALONE: bool;

    /// This write's claims; two writes with a claim in common never share a group.
    fn claims(&self) -> Vec<Self::Claim>;

    /// Commits `group` in one transaction (an error rolls all of it back); one outcome per write,
    /// in order, each the outcome the write would have had alone.
    fn commit_group(
        client: &mut Object,
        group: &[&Self],
    ) -> impl Future<Output = Result<Vec<Self::Output>, StoreError>> + Send;

    /// Commits `write` in a transaction of its own (after its group was refused).
    fn commit_alone(client: &mut Object, write: &Self)
    -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

/// A write waiting for its group, and where its answer goes.
pub(super) struct Queued<W: GroupedWrite> {
    pub(super) write: W,
    pub(super) reply: oneshot::Sender<Result<W::Output, StoreError>>,
}

/// The queue of one group committer. Cheap to clone; the task ends with the last clone.
pub(super) struct Committer<W: GroupedWrite> {
    queue: mpsc::Sender<Queued<W>>,
    timeout: Duration,
}

impl<W: GroupedWrite> Clone for Committer<W> {
    fn clone(&self) -> Committer<W> {
        Committer {
            queue: self.queue.clone(),
            timeout: self.timeout,
        }
    }
}

impl<W: GroupedWrite> Committer<W> {
    /// Starts the committer's task on the runtime; each group gets the bound `timeout`.
    pub(super) fn start(pool: Pool, timeout: Duration) -> Committer<W> {
        let (queue, queued) = mpsc::channel(W::MAX_GROUP * 4);
        tokio::spawn(run(pool, timeout, queued));
        Committer { queue, timeout }
    }

    /// Queues `write` and waits for its answer, both under the store's bound. A caller queued
    /// behind a slow group may time out first: like any timed-out commit, the outcome is then
    /// unknown to the caller, who was told nothing about it.
    pub(super) async fn submit(&self, write: W) -> Result<W::Output, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = || StoreError::Unavailable("store operation timed out".to_owned());
        let stopped = || StoreError::Unavailable(format!("the {} task stopped", W::NAME));
        let (reply, answer) = oneshot::channel();
        timeout_at(deadline, self.queue.send(Queued { write, reply }))
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| stopped())?;
        match timeout_at(deadline, answer).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(timed_out()),
        }
    }
}

/// The committer's task: takes what is queued, up to `MAX_GROUP`, commits it in groups without a
/// shared claim, and answers each caller.
async fn run<W: GroupedWrite>(pool: Pool, timeout: Duration, mut queue: mpsc::Receiver<Queued<W>>) {
    let mut queued = Vec::with_capacity(W::MAX_GROUP);
    while queue.recv_many(&mut queued, W::MAX_GROUP).await > 0 {
        while !queued.is_empty() {
            let (group, later) = next_group(std::mem::take(&mut queued));
            queued = later;
            commit_or_answer(&pool, timeout, group).await;
        }
    }
}

/// Splits `queued` into a group in which no claim appears twice, in queue order, and the rest,
/// for the next group.
pub(super) fn next_group<W: GroupedWrite>(queued: Vec<Queued<W>>) -> (Vec<Queued<W>>, Vec<Queued<W>>) {
    let mut claimed = HashSet::new();
    queued.into_iter().partition(|queued| {
        let claims = queued.write.claims();
        // Every claim checked before any is recorded, so that a later write is judged alone.
        let fresh = claims.iter().all(|claim| !claimed.contains(claim));
        if fresh {
            claimed.extend(claims);
        }
        fresh
    })
}

/// Commits `group` in one transaction and answers each caller. When the database refused the
/// group and still answers, and the kind allows it (`RETRY_ALONE`), the group is rolled back and
/// each write is committed in a transaction of its own instead; when the database did not answer
/// (a lost connection, the bound), every caller gets that error.
pub(super) async fn commit_or_answer<W: GroupedWrite>(pool: &Pool, timeout: Duration, group: Vec<Queued<W>>) {
    let deadline = Instant::now() + timeout;
    let (outcome, refused) = {
        let writes: Vec<&W> = group.iter().map(|queued| &queued.write).collect();
        match bounded_client(pool, deadline, timeout).await {
            Ok(mut client) => {
                let outcome = timeout_at(deadline, W::commit_group(&mut client, &writes)).await;
                let refused = matches!(outcome, Ok(Err(_))) && !client.is_closed();
                (finish(client, outcome), refused)
            }
            Err(error) => (Err(error), false),
        }
    };
    match outcome {
        Ok(outcomes) => {
            for (queued, outcome) in group.into_iter().zip(outcomes) {
                let _ = queued.reply.send(Ok(outcome));
            }
        }
        Err(error) if !(refused && W::RETRY_ALONE) => {
            for queued in group {
                let _ = queued.reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            tracing::warn!(%error, writes = group.len(), kind = W::NAME, "group commit failed: committing its writes one by one");
            for queued in group {
                let deadline = Instant::now() + timeout;
                let outcome = match bounded_client(pool, deadline, timeout).await {
                    Ok(mut client) => {
                        let outcome = timeout_at(deadline, W::commit_alone(&mut client, &queued.write)).await;
                        finish(client, outcome)
                    }
                    Err(error) => Err(error),
                };
                let _ = queued.reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The grouping rule and the one-by-one fallback, with issuances as the kind of write.

    use time::OffsetDateTime;

    use super::super::identities::IssuanceGroup;
    use super::*;
    use crate::issuer::{CommitOutcome, IssuanceStore};
    use crate::store::conformance::{Harness, PostgresHarness, certificate, event, key, user};

    #[test]
    fn a_group_never_holds_a_user_or_a_key_twice_and_keeps_the_queue_order() {
        let pending = |user_name: &str, key_byte: u8| Queued {
            write: IssuanceGroup {
                certificate: certificate(user_name, key_byte, key_byte),
                event: event(user_name),
            },
            reply: oneshot::channel().0,
        };
        let queued = vec![
            pending("alice", 1),
            pending("alice", 2),
            pending("bob", 1),
            pending("carol", 3),
            pending("carol", 3),
            pending("dave", 4),
        ];
        let (group, later) = next_group(queued);
        let names = |issuances: &[Queued<IssuanceGroup>]| {
            issuances
                .iter()
                .map(|pending| {
                    format!(
                        "{}/{}",
                        pending.write.certificate.user_id,
                        pending.write.certificate.key_fingerprint.as_bytes()[0]
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&group), ["alice/1", "carol/3", "dave/4"]);
        assert_eq!(names(&later), ["alice/2", "bob/1", "carol/3"]);
        let (group, later) = next_group(later);
        assert_eq!(names(&group), ["alice/2", "bob/1", "carol/3"]);
        assert!(later.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_fails_is_committed_one_by_one_each_with_its_own_outcome() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        // Same serial: the group's certificate insert violates the primary key and rolls back.
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let group = vec![
            Queued {
                write: IssuanceGroup {
                    certificate: certificate("alice", 1, 7),
                    event: event("alice"),
                },
                reply: first,
            },
            Queued {
                write: IssuanceGroup {
                    certificate: certificate("erin", 5, 7),
                    event: event("erin"),
                },
                reply: second,
            },
        ];
        commit_or_answer(&store.pool, Duration::from_secs(10), group).await;
        let first = first_answer.await.expect("answered");
        let second = second_answer.await.expect("answered");
        assert!(
            matches!(first, Ok(CommitOutcome::Committed { renewal: false, .. })),
            "{first:?}"
        );
        assert!(matches!(second, Err(StoreError::Integrity(_))), "{second:?}");
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let alice = store.pin_state(&user("alice"), &key(1), since).await.expect("alice");
        assert_eq!((alice.user_pin, alice.certificates_since), (Some(key(1)), 1));
        let erin = store.pin_state(&user("erin"), &key(5), since).await.expect("erin");
        assert_eq!(
            (erin.user_pin, erin.certificates_since),
            (None, 0),
            "erin's transaction rolled back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_aborted_by_a_deadlock_with_another_replica_is_committed_one_by_one() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        // The other replica: bob's pin first, uncommitted.
        let mut other = harness.raw_client().await;
        let other = other.transaction().await.expect("begin");
        let pin = "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES ($1, $2, $2, now())";
        other
            .execute(pin, &[&"bob", &key(20).as_bytes().as_slice()])
            .await
            .expect("bob");
        // The group pins alice, then waits for bob's row.
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let group = vec![
            Queued {
                write: IssuanceGroup {
                    certificate: certificate("bob", 2, 12),
                    event: event("bob"),
                },
                reply: first,
            },
            Queued {
                write: IssuanceGroup {
                    certificate: certificate("alice", 1, 11),
                    event: event("alice"),
                },
                reply: second,
            },
        ];
        let pool = store.pool.clone();
        let committer = tokio::spawn(async move { commit_or_answer(&pool, Duration::from_secs(10), group).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The other replica now waits for alice's row: a cycle. PostgreSQL aborts the group, whose
        // wait is the older (deadlock_timeout, 1 s by default), and this insert goes through.
        other
            .execute(pin, &[&"alice", &key(21).as_bytes().as_slice()])
            .await
            .expect("alice, once the group is aborted");
        other.commit().await.expect("commit");
        committer.await.expect("committer");
        // One by one, after the other replica committed: both users are pinned to its keys.
        let bob = first_answer.await.expect("answered");
        let alice = second_answer.await.expect("answered");
        assert!(
            matches!(&bob, Ok(CommitOutcome::PinnedToOtherKey(pinned)) if *pinned == key(20)),
            "{bob:?}"
        );
        assert!(
            matches!(&alice, Ok(CommitOutcome::PinnedToOtherKey(pinned)) if *pinned == key(21)),
            "{alice:?}"
        );
    }
}
