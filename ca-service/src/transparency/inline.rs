//! Sequencing inside the store's own write transactions, for a store that groups its writes (the
//! embedded store's group committer).
//!
//! Without it an issuance waits for two transactions in a row: the one that commits its entry,
//! then the sequencer's, which gives the entry its index. With it the sequencer hands the log head
//! over to the store's writer, which sequences what is pending at the end of each group, in the
//! same transaction and under the same fsync, and answers each write with its index.
//!
//! The sequencer keeps every duty that is not the transaction itself: it checks and signs the head
//! before handing it over, pauses the writer's sequencing when the signed log lags for longer than
//! the stall bound, records each batch the writer reports (in order, each one built on the last),
//! and steps down when one fails. The writer only ever extends the head it was handed, with the
//! same compare-and-swap as `LogSequencer::sequence`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::{LogHead, SequenceOutcome};
use crate::storage::StoreError;

/// The hand-over between the sequencer and a store writer. One per store, shared by its clones.
#[derive(Debug, Default)]
pub struct InlineSequencing {
    state: Mutex<State>,
    reported: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The head the writer extends next; `None` while the sequencer has not handed it over.
    head: Option<LogHead>,
    /// Most entries the writer sequences in one transaction.
    max_entries: usize,
    /// True while the sequencer wants entries left pending (the signed log lags).
    paused: bool,
    /// What the writer did since the sequencer last looked, oldest first.
    reports: VecDeque<InlineReport>,
}

/// One thing the writer did with the head it was handed.
#[derive(Debug, Clone)]
pub enum InlineReport {
    /// A committed batch on top of `previous`.
    Sequenced {
        /// The head the batch was built on.
        previous: LogHead,
        /// The head after it.
        head: LogHead,
        /// `(entry id, log index)` of each entry, in index order.
        assignments: Vec<(i64, u64)>,
        /// True when the batch took `max_entries`: more may be pending.
        full: bool,
    },
    /// The stored head was not the one handed over: the writer gave the head back.
    HeadMoved {
        /// The head the writer was handed.
        expected: LogHead,
        /// The head it found.
        actual: LogHead,
    },
    /// Sequencing failed (nothing of it was written): the writer gave the head back.
    Failed(StoreError),
}

impl InlineSequencing {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sequencer hands `head` over: from now on the writer extends it, `max_entries` at a time.
    /// Reports of an earlier hand-over are dropped.
    pub fn hand_over(&self, head: LogHead, max_entries: usize) {
        let mut state = self.state();
        *state = State {
            head: Some(head),
            max_entries,
            ..State::default()
        };
    }

    /// The sequencer takes sequencing back (it steps down); the writer stops sequencing.
    pub fn take_back(&self) {
        *self.state() = State::default();
    }

    /// The sequencer pauses (`true`) or resumes the writer's sequencing.
    pub fn pause(&self, paused: bool) {
        self.state().paused = paused;
    }

    /// Everything the writer reported since the last call, oldest first.
    pub fn take_reports(&self) -> Vec<InlineReport> {
        self.state().reports.drain(..).collect()
    }

    /// Waits until the writer reports something (or has reported since the last wait).
    pub async fn reported(&self) {
        self.reported.notified().await;
    }

    /// The writer's side: the head to extend in this transaction and how many entries to take,
    /// or `None` when it must not sequence (not handed over, or paused).
    pub fn assignment(&self) -> Option<(LogHead, usize)> {
        let state = self.state();
        match state.head {
            Some(head) if !state.paused => Some((head, state.max_entries)),
            _ => None,
        }
    }

    /// The writer's side: what sequencing onto `previous` gave, reported once its transaction has
    /// committed (or failed: then only a failure is reported, and the head stays where it was).
    pub fn report(&self, previous: LogHead, outcome: Result<SequenceOutcome, StoreError>) {
        let mut state = self.state();
        if state.head != Some(previous) {
            // Taken back (or handed over anew) while the transaction ran: the sequencer reloads
            // the head from the store, which holds this batch if it committed.
            return;
        }
        let report = match outcome {
            Ok(SequenceOutcome::Idle(_)) => return,
            Ok(SequenceOutcome::Sequenced { head, assignments }) => {
                state.head = Some(head);
                let full = assignments.len() >= state.max_entries;
                InlineReport::Sequenced {
                    previous,
                    head,
                    assignments,
                    full,
                }
            }
            Ok(SequenceOutcome::HeadMoved(actual)) => {
                state.head = None;
                InlineReport::HeadMoved {
                    expected: previous,
                    actual,
                }
            }
            Err(error) => {
                state.head = None;
                InlineReport::Failed(error)
            }
        };
        state.reports.push_back(report);
        drop(state);
        self.reported.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64) -> LogHead {
        LogHead {
            size,
            root: [size as u8; 32],
        }
    }

    fn batch(size: u64, entries: u64) -> Result<SequenceOutcome, StoreError> {
        Ok(SequenceOutcome::Sequenced {
            head: head(size + entries),
            assignments: (size..size + entries)
                .map(|index| (index as i64 + 100, index))
                .collect(),
        })
    }

    #[test]
    fn the_writer_sequences_only_a_head_handed_over_and_not_paused() {
        let inline = InlineSequencing::default();
        assert_eq!(inline.assignment(), None, "nothing handed over yet");
        inline.hand_over(head(5), 64);
        assert_eq!(inline.assignment(), Some((head(5), 64)));
        inline.pause(true);
        assert_eq!(inline.assignment(), None, "paused while the signed log lags");
        inline.pause(false);
        assert_eq!(inline.assignment(), Some((head(5), 64)));
        inline.pause(true);
        inline.take_back();
        assert_eq!(inline.assignment(), None);
        inline.pause(false);
        assert_eq!(inline.assignment(), None, "taken back, not merely paused");
    }

    #[test]
    fn committed_batches_move_the_head_and_are_reported_in_order() {
        let inline = InlineSequencing::default();
        inline.hand_over(head(5), 4);
        inline.report(head(5), batch(5, 2));
        assert_eq!(
            inline.assignment(),
            Some((head(7), 4)),
            "the next transaction extends the new head"
        );
        inline.report(head(7), Ok(SequenceOutcome::Idle(head(7))));
        inline.report(head(7), batch(7, 4));
        let reports = inline.take_reports();
        assert_eq!(reports.len(), 2, "an idle transaction reports nothing");
        assert!(matches!(
            &reports[0],
            InlineReport::Sequenced { previous, head: new, full: false, assignments }
                if *previous == head(5) && *new == head(7) && assignments == &[(105, 5), (106, 6)]
        ));
        assert!(matches!(&reports[1], InlineReport::Sequenced { full: true, .. }));
        assert!(inline.take_reports().is_empty(), "each report is taken once");
    }

    #[test]
    fn a_failure_gives_the_head_back() {
        let inline = InlineSequencing::default();
        inline.hand_over(head(5), 4);
        inline.report(head(5), Ok(SequenceOutcome::HeadMoved(head(9))));
        assert_eq!(
            inline.assignment(),
            None,
            "the writer stops extending a head that moved"
        );
        assert!(matches!(
            inline.take_reports()[..],
            [InlineReport::HeadMoved { expected, actual }] if expected == head(5) && actual == head(9)
        ));
        inline.hand_over(head(9), 4);
        inline.report(head(9), Err(StoreError::Unavailable("disk".to_owned())));
        assert_eq!(inline.assignment(), None);
        assert!(matches!(
            inline.take_reports()[..],
            [InlineReport::Failed(StoreError::Unavailable(_))]
        ));
    }

    #[test]
    fn a_batch_reported_after_the_head_was_taken_back_is_dropped() {
        let inline = InlineSequencing::default();
        inline.hand_over(head(5), 4);
        inline.take_back();
        inline.report(head(5), batch(5, 2));
        assert!(inline.take_reports().is_empty());
        inline.hand_over(head(7), 4);
        inline.report(head(5), batch(5, 2));
        assert!(
            inline.take_reports().is_empty(),
            "a report about an earlier hand-over is not about this head"
        );
        assert_eq!(inline.assignment(), Some((head(7), 4)));
    }
}
