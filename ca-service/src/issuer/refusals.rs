//! Refusal summaries: a caller that sends refusal after refusal gets one audit entry each only up
//! to a bound per window; the rest are counted and written as one `refusals-summarized` entry per
//! caller and window, so that the permanent log grows by the window, not by the request.
//!
//! Per caller (the principal's name) and window (`RefusalLimits::window`): the first
//! `entries_per_window` refusals are logged one by one, as before (answered after their entry
//! commits); later ones are answered at once and counted by reason class, with the number of
//! distinct subjects (up to `MAX_SUBJECTS_TRACKED`). The counts reach the log when the caller's
//! next refusal finds the window over, when the flusher finds it over (every second), and at
//! shutdown. A crash loses at most the counts of the windows still open (the caller's answers
//! were refusals: nothing was issued in them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::IssuanceStore;
use crate::audit::{AuditEvent, AuditKind, rfc3339};

/// How many distinct subjects a window counts exactly (beyond: "at least").
pub const MAX_SUBJECTS_TRACKED: usize = 1024;

/// How many callers' windows are tracked at once; beyond, the oldest window is closed early.
const MAX_CALLERS: usize = 4096;

/// The bounds of one caller's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// The summary window.
    pub window: Duration,
    /// Refusals logged one by one per caller and window.
    pub entries_per_window: u32,
}

impl Default for RefusalLimits {
    fn default() -> RefusalLimits {
        RefusalLimits {
            window: Duration::from_secs(60),
            entries_per_window: 20,
        }
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write its own entry before answering.
    Log,
    /// Counted for the window's summary; answer at once.
    Counted,
}

/// One caller's open window.
#[derive(Debug)]
struct Window {
    opened: Instant,
    opened_at: OffsetDateTime,
    logged: u32,
    counted: BTreeMap<&'static str, u64>,
    subjects: HashSet<String>,
}

impl Window {
    fn new(now: Instant, now_at: OffsetDateTime) -> Window {
        Window {
            opened: now,
            opened_at: now_at,
            logged: 0,
            counted: BTreeMap::new(),
            subjects: HashSet::new(),
        }
    }

    /// The window's summary entry, if it counted anything.
    fn summary(self, actor: String, closed_at: OffsetDateTime) -> Option<AuditEvent> {
        let total: u64 = self.counted.values().sum();
        if total == 0 {
            return None;
        }
        let subjects = if self.subjects.len() >= MAX_SUBJECTS_TRACKED {
            format!("at least {MAX_SUBJECTS_TRACKED}")
        } else {
            self.subjects.len().to_string()
        };
        let mut details = vec![
            ("window-start", rfc3339(self.opened_at)),
            ("window-end", rfc3339(closed_at)),
            ("logged-individually", self.logged.to_string()),
            ("summarized-count", total.to_string()),
            ("distinct-subjects", subjects),
        ];
        details.extend(self.counted.iter().map(|(reason, count)| (*reason, count.to_string())));
        Some(AuditEvent {
            kind: AuditKind::RefusalsSummarized,
            actor,
            subject: String::new(),
            details,
        })
    }
}

/// The refusal windows of every caller.
#[derive(Debug)]
pub struct RefusalSummaries {
    limits: RefusalLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<String, Window>,
    /// Summaries of closed windows not yet written.
    closed: Vec<AuditEvent>,
}

impl RefusalSummaries {
    /// Empty windows under `limits`.
    pub fn new(limits: RefusalLimits) -> RefusalSummaries {
        RefusalSummaries {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// Admits one refusal of `actor` about `subject`, of reason class `reason` (a fixed name such
    /// as `refused-csr`).
    pub fn admit(&self, actor: &str, subject: &str, reason: &'static str) -> Admission {
        self.admit_at(actor, subject, reason, Instant::now(), OffsetDateTime::now_utc())
    }

    fn admit_at(
        &self,
        actor: &str,
        subject: &str,
        reason: &'static str,
        now: Instant,
        now_at: OffsetDateTime,
    ) -> Admission {
        let mut state = self.lock();
        let State { windows, closed } = &mut *state;
        if let Some(window) = windows.get(actor)
            && now.duration_since(window.opened) >= self.limits.window
            && let Some(window) = windows.remove(actor)
        {
            closed.extend(window.summary(actor.to_owned(), now_at));
        }
        if !windows.contains_key(actor) && windows.len() >= MAX_CALLERS {
            // Close the oldest window early rather than grow without bound.
            let oldest = windows
                .iter()
                .min_by_key(|(_, window)| window.opened)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest
                && let Some(window) = windows.remove(&name)
            {
                closed.extend(window.summary(name, now_at));
            }
        }
        let window = windows
            .entry(actor.to_owned())
            .or_insert_with(|| Window::new(now, now_at));
        if window.logged < self.limits.entries_per_window {
            window.logged += 1;
            return Admission::Log;
        }
        *window.counted.entry(reason).or_default() += 1;
        if window.subjects.len() < MAX_SUBJECTS_TRACKED && !window.subjects.contains(subject) {
            window.subjects.insert(subject.to_owned());
        }
        Admission::Counted
    }

    /// Takes the summaries of every window over by now (and those closed earlier).
    pub fn take_due(&self) -> Vec<AuditEvent> {
        self.take(
            |window, now| now.duration_since(window.opened) >= self.limits.window,
            Instant::now(),
        )
    }

    /// Takes the summaries of every window, over or not (at shutdown).
    pub fn take_all(&self) -> Vec<AuditEvent> {
        self.take(|_, _| true, Instant::now())
    }

    /// Gives back summaries that could not be written, to be written with the next ones.
    pub fn restore(&self, summaries: Vec<AuditEvent>) {
        let mut state = self.lock();
        // Bounded like the windows: past it, the oldest unwritten summaries are dropped (logged).
        state.closed.extend(summaries);
        let excess = state.closed.len().saturating_sub(MAX_CALLERS);
        if excess > 0 {
            tracing::error!(
                dropped = excess,
                "refusal summaries could not be written and were dropped"
            );
            state.closed.drain(..excess);
        }
    }

    fn take(&self, due: impl Fn(&Window, Instant) -> bool, now: Instant) -> Vec<AuditEvent> {
        let now_at = OffsetDateTime::now_utc();
        let mut state = self.lock();
        let State { windows, closed } = &mut *state;
        let over: Vec<String> = windows
            .iter()
            .filter(|(_, window)| due(window, now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in over {
            if let Some(window) = windows.remove(&name) {
                closed.extend(window.summary(name, now_at));
            }
        }
        std::mem::take(closed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still counts.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes the summaries of windows that are over, every second, until `stop`; then every open
/// window's. A summary the store refuses is kept for the next round.
pub async fn run_flusher<S: IssuanceStore>(
    summaries: Arc<RefusalSummaries>,
    store: Arc<S>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        let due = if stopping {
            summaries.take_all()
        } else {
            summaries.take_due()
        };
        let mut unwritten = Vec::new();
        for summary in due {
            if !unwritten.is_empty() {
                unwritten.push(summary);
                continue;
            }
            if let Err(error) = store.append_event(summary.clone()).await {
                tracing::warn!(%error, "cannot write a refusal summary yet");
                unwritten.push(summary);
            }
        }
        if stopping {
            if !unwritten.is_empty() {
                tracing::error!(lost = unwritten.len(), "refusal summaries not written at shutdown");
            }
            return;
        }
        summaries.restore(unwritten);
    }
}

/// How often the flusher looks for windows that are over.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ParsedEntry;

    fn limits() -> RefusalLimits {
        RefusalLimits {
            window: Duration::from_secs(60),
            entries_per_window: 3,
        }
    }

    #[test]
    fn past_the_bound_refusals_are_counted_and_summarized_once_per_window() {
        let summaries = RefusalSummaries::new(limits());
        let start = Instant::now();
        let at = OffsetDateTime::now_utc();
        let admissions: Vec<Admission> = (0..10)
            .map(|n| summaries.admit_at("mallory", &format!("user{}", n % 4), "refused-csr", start, at))
            .collect();
        assert_eq!(&admissions[..3], &[Admission::Log; 3]);
        assert!(admissions[3..].iter().all(|admission| *admission == Admission::Counted));
        // Another caller has a window of its own.
        assert_eq!(
            summaries.admit_at("bob", "bob", "refused-csr", start, at),
            Admission::Log
        );
        assert_eq!(
            summaries.admit_at("mallory", "x", "rate-limited", start, at),
            Admission::Counted
        );
        assert!(summaries.take_due().is_empty(), "the window is still open");

        // The window is over: mallory's next refusal is logged again and the summary waits.
        let later = start + Duration::from_secs(61);
        assert_eq!(
            summaries.admit_at("mallory", "y", "refused-csr", later, at),
            Admission::Log
        );
        let written = summaries.take_due();
        assert_eq!(written.len(), 1, "bob counted nothing and mallory's new window is open");
        let entry = ParsedEntry::parse(&written[0].encode().bytes).expect("parses");
        assert_eq!(entry.kind, "refusals-summarized");
        assert_eq!(entry.actor, "mallory");
        assert_eq!(entry.detail("summarized-count"), Some("8"));
        assert_eq!(entry.detail("refused-csr"), Some("7"));
        assert_eq!(entry.detail("rate-limited"), Some("1"));
        assert_eq!(entry.detail("logged-individually"), Some("3"));
        assert_eq!(entry.detail("distinct-subjects"), Some("5"));
        assert!(summaries.take_due().is_empty(), "written once");
    }

    #[test]
    fn shutdown_takes_open_windows_and_unwritten_summaries_come_back() {
        let summaries = RefusalSummaries::new(limits());
        for _ in 0..5 {
            summaries.admit("mallory", "alice", "refused-csr");
        }
        let open = summaries.take_all();
        assert_eq!(open.len(), 1);
        summaries.restore(open);
        let again = summaries.take_due();
        assert_eq!(
            again.len(),
            1,
            "a summary the store refused is written with the next ones"
        );
        assert!(summaries.take_all().is_empty());
    }
}
