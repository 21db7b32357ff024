//! The offline verifier's replay of the key history: every user's pinned key rebuilt from the log's entries in index order, each change checked against the rules the service enforces.
//!
//! The rules (ARCHITECTURE.md: a pinned user's key changes only by consuming an approved, unexpired
//! identity reset for exactly that pin; one key per user, one user per key):
//! - `issuance` pins a key for a user who has none, and the key is pinned to nobody else;
//! - `renewal` names the key pinned to its subject;
//! - `request-opened` opens a request id once; `request-approved` names an opened request, with its
//!   subject, kind and requester, and is written by an actor other than the requester, once,
//!   before the request expired;
//! - `identity-reset` replaces exactly the pinned key (`old-key-sha256`, which is also the key the
//!   request was opened for) by a key pinned to nobody else, and consumes, once and before it
//!   expired, an approved `identity-reset` request for the same subject whose requester and
//!   approver it names.
//!
//! Other kinds (`issuance-refused`, `refusals-summarized`, `ceremony`, `revocation`, and kinds this
//! version does not know) change no pin; they are counted. Entries are ordered by index, and the service writes each
//! change after what it depends on (a renewal after its pin, an approval after its request, a reset
//! after its approval, a key pinned again only after the reset that released it), so an honest
//! log replays without a failure.
//!
//! Memory: per user its pin (user id, key, index) and the pin's reverse (key to user); per request
//! its facts until it is consumed, then its id; never the entries themselves.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::approvals::ApprovalKind;
use crate::audit::{AuditKind, ParsedEntry};

/// A key fingerprint (SPKI SHA-256) as the entries write it, decoded.
type Key = [u8; 32];

/// Why the key history does not replay; every variant names the entry at fault by its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayFailure {
    /// A detail the entry's kind requires is missing.
    #[error("entry {index}: the {kind} entry has no {detail} detail")]
    MissingDetail {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The missing detail's name.
        detail: &'static str,
    },
    /// A detail does not hold what its name says (a SHA-256 in hex, an RFC 3339 time).
    #[error("entry {index}: the {detail} detail {value:?} is malformed")]
    MalformedDetail {
        /// The entry's index.
        index: u64,
        /// The detail's name.
        detail: &'static str,
        /// Its value.
        value: String,
    },
    /// An `issuance` for a user who already has a pin: a key change without an approved reset.
    #[error(
        "entry {index}: issuance pins key {key} for {user}, who is already pinned to key {pinned} (entry {pinned_at}): a key change without an approved identity reset"
    )]
    AlreadyPinned {
        /// The entry's index.
        index: u64,
        /// The user.
        user: String,
        /// The key the entry pins.
        key: String,
        /// The key pinned before.
        pinned: String,
        /// The entry that pinned it.
        pinned_at: u64,
    },
    /// An `issuance` or `identity-reset` pins a key pinned to another user.
    #[error(
        "entry {index}: {kind} pins key {key} for {user}, but that key is pinned to {owner} (entry {pinned_at}): two users on one key"
    )]
    KeyPinnedElsewhere {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The user it pins the key for.
        user: String,
        /// The key.
        key: String,
        /// The user the key is pinned to.
        owner: String,
        /// The entry that pinned it to them.
        pinned_at: u64,
    },
    /// A `renewal` for a user without a pin.
    #[error("entry {index}: renewal for {user} (key {key}), who has no pinned key")]
    RenewalWithoutPin {
        /// The entry's index.
        index: u64,
        /// The user.
        user: String,
        /// The key it names.
        key: String,
    },
    /// A `renewal` names a key other than the user's pinned one.
    #[error(
        "entry {index}: renewal for {user} names key {key}, but {user}'s pinned key is {pinned} (entry {pinned_at})"
    )]
    RenewalOfOtherKey {
        /// The entry's index.
        index: u64,
        /// The user.
        user: String,
        /// The key it names.
        key: String,
        /// The pinned key.
        pinned: String,
        /// The entry that pinned it.
        pinned_at: u64,
    },
    /// An `identity-reset` replaces a key that is not the pinned one (or a user with no pin).
    #[error(
        "entry {index}: identity-reset for {user} replaces key {old_key}, but {user}'s pinned key is {}",
        match pinned { Some((key, at)) => format!("{key} (entry {at})"), None => "none".to_owned() }
    )]
    ResetOfOtherKey {
        /// The entry's index.
        index: u64,
        /// The user.
        user: String,
        /// The key it says it replaces.
        old_key: String,
        /// The pinned key and the entry that pinned it, if any.
        pinned: Option<(String, u64)>,
    },
    /// A request id opened a second time.
    #[error("entry {index}: request {request} is opened again (first opened at entry {first})")]
    RequestReopened {
        /// The entry's index.
        index: u64,
        /// The request id.
        request: String,
        /// The entry that opened it first.
        first: u64,
    },
    /// An approval or reset names a request no earlier `request-opened` entry opened.
    #[error("entry {index}: {kind} names request {request}, which no earlier request-opened entry opened")]
    UnknownRequest {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The request id.
        request: String,
    },
    /// An approval or reset disagrees with the request it names.
    #[error(
        "entry {index}: {kind} of request {request} has {field} {found:?}, but the request (opened at entry {opened_at}) has {expected:?}"
    )]
    RequestMismatch {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The request id.
        request: String,
        /// What differs (subject, request-kind, requested-by, approved-by, old-key-sha256).
        field: &'static str,
        /// The entry's value.
        found: String,
        /// The request's value.
        expected: String,
        /// The entry that opened the request.
        opened_at: u64,
    },
    /// A request approved by the admin who opened it: dual control needs two.
    #[error("entry {index}: request {request} is approved by {actor}, who opened it (entry {opened_at})")]
    SelfApproval {
        /// The entry's index.
        index: u64,
        /// The request id.
        request: String,
        /// The approving (and requesting) actor.
        actor: String,
        /// The entry that opened the request.
        opened_at: u64,
    },
    /// A request approved a second time.
    #[error("entry {index}: request {request} is approved again (first approved at entry {first})")]
    ApprovedTwice {
        /// The entry's index.
        index: u64,
        /// The request id.
        request: String,
        /// The first approval.
        first: u64,
    },
    /// An `identity-reset` consumes a request that was never approved.
    #[error("entry {index}: identity-reset for {user} consumes request {request}, which was never approved")]
    NotApproved {
        /// The entry's index.
        index: u64,
        /// The user.
        user: String,
        /// The request id.
        request: String,
    },
    /// An approval or action of a request already consumed by an earlier action.
    #[error("entry {index}: {kind} names request {request}, which the entry at {consumed_at} already consumed")]
    AlreadyConsumed {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The request id.
        request: String,
        /// The reset that consumed it.
        consumed_at: u64,
    },
    /// An escrow release or recovery-key change that consumes a request never approved.
    #[error("entry {index}: {kind} consumes request {request}, which was never approved")]
    ActionNotApproved {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The request id.
        request: String,
    },
    /// An approval or reset written after the request expired (beyond the time tolerance).
    #[error("entry {index}: {kind} of request {request} at {time}, after the request expired at {expires}")]
    Expired {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The request id.
        request: String,
        /// The entry's time.
        time: String,
        /// The request's expiry.
        expires: String,
    },
}

/// What the replay saw, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCounts {
    /// Users with a pinned key at the end.
    pub users: u64,
    /// `issuance` entries (first pins).
    pub pins: u64,
    /// `renewal` entries.
    pub renewals: u64,
    /// `identity-reset` entries (each a key change under an approved request).
    pub resets: u64,
    /// `request-opened` entries.
    pub requests: u64,
    /// `request-approved` entries.
    pub approvals: u64,
    /// `escrow-released`, `recovery-key-registered` and `recovery-key-disabled` entries (each
    /// consuming an approved request).
    pub approved_actions: u64,
    /// Entries of kinds that change no pin.
    pub other: u64,
}

/// A user's pinned key and the entry that pinned it.
#[derive(Debug, Clone, Copy)]
struct Pin {
    key: Key,
    entry: u64,
}

/// A dual-control request as its entries describe it, until a reset consumes it.
#[derive(Debug)]
struct Request {
    opened_at: u64,
    subject: String,
    kind: String,
    requested_by: String,
    /// The key pinned when it was opened (the one a reset replaces).
    key: Option<Key>,
    expires: OffsetDateTime,
    /// The approving actor and the approval's index.
    approval: Option<(String, u64)>,
}

/// The replay's state; feed it every entry in index order with `apply`.
#[derive(Debug)]
pub struct Replay {
    tolerance: Duration,
    pins: HashMap<Rc<str>, Pin>,
    owners: HashMap<Key, Rc<str>>,
    requests: HashMap<String, Request>,
    /// Consumed request ids and the reset that consumed each.
    consumed: HashMap<String, u64>,
    counts: HistoryCounts,
}

/// The kinds this version knows, by name.
const KINDS: [AuditKind; 15] = [
    AuditKind::Issuance,
    AuditKind::Renewal,
    AuditKind::IssuanceRefused,
    AuditKind::RefusalsSummarized,
    AuditKind::Ceremony,
    AuditKind::RequestOpened,
    AuditKind::RequestApproved,
    AuditKind::IdentityReset,
    AuditKind::Revocation,
    AuditKind::KeyBackupStored,
    AuditKind::KeyBackupRead,
    AuditKind::EscrowDeposited,
    AuditKind::EscrowReleased,
    AuditKind::RecoveryKeyRegistered,
    AuditKind::RecoveryKeyDisabled,
];

/// One entry being replayed: its index and parsed text.
struct At<'a> {
    index: u64,
    kind: &'static str,
    entry: &'a ParsedEntry,
}

impl At<'_> {
    fn detail(&self, name: &'static str) -> Result<&str, ReplayFailure> {
        self.entry.detail(name).ok_or(ReplayFailure::MissingDetail {
            index: self.index,
            kind: self.kind,
            detail: name,
        })
    }

    fn malformed(&self, detail: &'static str, value: &str) -> ReplayFailure {
        ReplayFailure::MalformedDetail {
            index: self.index,
            detail,
            value: value.to_owned(),
        }
    }

    fn key(&self, name: &'static str) -> Result<Key, ReplayFailure> {
        let value = self.detail(name)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(value, &mut key).map_err(|_| self.malformed(name, value))?;
        Ok(key)
    }

    fn time(&self, name: &'static str, value: &str) -> Result<OffsetDateTime, ReplayFailure> {
        OffsetDateTime::parse(value, &Rfc3339).map_err(|_| self.malformed(name, value))
    }

    fn mismatch(
        &self,
        request: &str,
        field: &'static str,
        found: &str,
        expected: &str,
        opened_at: u64,
    ) -> ReplayFailure {
        ReplayFailure::RequestMismatch {
            index: self.index,
            kind: self.kind,
            request: request.to_owned(),
            field,
            found: found.to_owned(),
            expected: expected.to_owned(),
            opened_at,
        }
    }
}

impl Replay {
    /// An empty history; `tolerance` is how far an entry's time may pass a request's expiry (the
    /// service checks expiry a moment before it encodes the entry, on its own clock).
    pub fn new(tolerance: Duration) -> Replay {
        Replay {
            tolerance,
            pins: HashMap::new(),
            owners: HashMap::new(),
            requests: HashMap::new(),
            consumed: HashMap::new(),
            counts: HistoryCounts::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> HistoryCounts {
        HistoryCounts {
            users: self.pins.len() as u64,
            ..self.counts
        }
    }

    /// Replays the entry at `index` (the next one in index order).
    pub fn apply(&mut self, index: u64, entry: &ParsedEntry) -> Result<(), ReplayFailure> {
        let Some(kind) = KINDS.into_iter().find(|kind| kind.name() == entry.kind) else {
            self.counts.other += 1;
            return Ok(());
        };
        let at = At {
            index,
            kind: kind.name(),
            entry,
        };
        match kind {
            AuditKind::Issuance => self.issuance(&at),
            AuditKind::Renewal => self.renewal(&at),
            AuditKind::RequestOpened => self.request_opened(&at),
            AuditKind::RequestApproved => self.request_approved(&at),
            AuditKind::IdentityReset => self.identity_reset(&at),
            AuditKind::EscrowReleased => {
                self.approved_action(&at, ApprovalKind::EscrowRelease, Some("recovery-key-sha256"))
            }
            AuditKind::RecoveryKeyRegistered => {
                self.approved_action(&at, ApprovalKind::RecoveryKeyRegistration, Some("recovery-key-sha256"))
            }
            AuditKind::RecoveryKeyDisabled => {
                self.approved_action(&at, ApprovalKind::RecoveryKeyDisable, Some("recovery-key-sha256"))
            }
            AuditKind::IssuanceRefused
            | AuditKind::RefusalsSummarized
            | AuditKind::Ceremony
            | AuditKind::Revocation
            | AuditKind::KeyBackupStored
            | AuditKind::KeyBackupRead
            | AuditKind::EscrowDeposited => {
                self.counts.other += 1;
                Ok(())
            }
        }
    }

    fn issuance(&mut self, at: &At<'_>) -> Result<(), ReplayFailure> {
        let key = at.key("key-sha256")?;
        let user = at.entry.subject.as_str();
        if let Some(pin) = self.pins.get(user) {
            return Err(ReplayFailure::AlreadyPinned {
                index: at.index,
                user: user.to_owned(),
                key: hex::encode(key),
                pinned: hex::encode(pin.key),
                pinned_at: pin.entry,
            });
        }
        self.check_unowned(at, key)?;
        let user: Rc<str> = Rc::from(user);
        self.owners.insert(key, Rc::clone(&user));
        self.pins.insert(user, Pin { key, entry: at.index });
        self.counts.pins += 1;
        Ok(())
    }

    fn renewal(&mut self, at: &At<'_>) -> Result<(), ReplayFailure> {
        let key = at.key("key-sha256")?;
        let user = at.entry.subject.as_str();
        match self.pins.get(user) {
            None => Err(ReplayFailure::RenewalWithoutPin {
                index: at.index,
                user: user.to_owned(),
                key: hex::encode(key),
            }),
            Some(pin) if pin.key != key => Err(ReplayFailure::RenewalOfOtherKey {
                index: at.index,
                user: user.to_owned(),
                key: hex::encode(key),
                pinned: hex::encode(pin.key),
                pinned_at: pin.entry,
            }),
            Some(_) => {
                self.counts.renewals += 1;
                Ok(())
            }
        }
    }

    fn request_opened(&mut self, at: &At<'_>) -> Result<(), ReplayFailure> {
        let id = at.detail("request-id")?;
        if let Some(first) = self
            .requests
            .get(id)
            .map(|request| request.opened_at)
            .or_else(|| self.consumed.get(id).copied())
        {
            return Err(ReplayFailure::RequestReopened {
                index: at.index,
                request: id.to_owned(),
                first,
            });
        }
        let kind = at.detail("request-kind")?.to_owned();
        let expires = at.detail("expires")?;
        let expires = at.time("expires", expires)?;
        let key = match at.entry.detail("key-sha256") {
            Some(_) => Some(at.key("key-sha256")?),
            None => None,
        };
        self.requests.insert(
            id.to_owned(),
            Request {
                opened_at: at.index,
                subject: at.entry.subject.clone(),
                kind,
                requested_by: at.entry.actor.clone(),
                key,
                expires,
                approval: None,
            },
        );
        self.counts.requests += 1;
        Ok(())
    }

    /// The open request `id` names, or why there is none.
    fn open_request(&self, at: &At<'_>, id: &str) -> Result<&Request, ReplayFailure> {
        if let Some(consumed_at) = self.consumed.get(id) {
            return Err(ReplayFailure::AlreadyConsumed {
                index: at.index,
                kind: at.kind,
                request: id.to_owned(),
                consumed_at: *consumed_at,
            });
        }
        self.requests.get(id).ok_or_else(|| ReplayFailure::UnknownRequest {
            index: at.index,
            kind: at.kind,
            request: id.to_owned(),
        })
    }

    /// Checks that `at` (an approval or a reset) was written before `request` expired.
    fn check_unexpired(&self, at: &At<'_>, id: &str, request: &Request) -> Result<(), ReplayFailure> {
        let time = at.time("time", &at.entry.time)?;
        if time > request.expires + self.tolerance {
            return Err(ReplayFailure::Expired {
                index: at.index,
                kind: at.kind,
                request: id.to_owned(),
                time: at.entry.time.clone(),
                expires: crate::audit::rfc3339(request.expires),
            });
        }
        Ok(())
    }

    fn request_approved(&mut self, at: &At<'_>) -> Result<(), ReplayFailure> {
        let id = at.detail("request-id")?;
        let kind = at.detail("request-kind")?;
        let requested_by = at.detail("requested-by")?;
        let request = self.open_request(at, id)?;
        let opened_at = request.opened_at;
        if at.entry.subject != request.subject {
            return Err(at.mismatch(id, "subject", &at.entry.subject, &request.subject, opened_at));
        }
        if kind != request.kind {
            return Err(at.mismatch(id, "request-kind", kind, &request.kind, opened_at));
        }
        if requested_by != request.requested_by {
            return Err(at.mismatch(id, "requested-by", requested_by, &request.requested_by, opened_at));
        }
        if at.entry.actor == request.requested_by {
            return Err(ReplayFailure::SelfApproval {
                index: at.index,
                request: id.to_owned(),
                actor: at.entry.actor.clone(),
                opened_at,
            });
        }
        if let Some((_, first)) = &request.approval {
            return Err(ReplayFailure::ApprovedTwice {
                index: at.index,
                request: id.to_owned(),
                first: *first,
            });
        }
        self.check_unexpired(at, id, request)?;
        let actor = at.entry.actor.clone();
        if let Some(request) = self.requests.get_mut(id) {
            request.approval = Some((actor, at.index));
        }
        self.counts.approvals += 1;
        Ok(())
    }

    fn identity_reset(&mut self, at: &At<'_>) -> Result<(), ReplayFailure> {
        let key = at.key("key-sha256")?;
        let old_key = at.key("old-key-sha256")?;
        let id = at.detail("request-id")?;
        let requested_by = at.detail("requested-by")?;
        let approved_by = at.detail("approved-by")?;
        let user = at.entry.subject.as_str();
        let pinned = self.pins.get(user).copied();
        if pinned.is_none_or(|pin| pin.key != old_key) {
            return Err(ReplayFailure::ResetOfOtherKey {
                index: at.index,
                user: user.to_owned(),
                old_key: hex::encode(old_key),
                pinned: pinned.map(|pin| (hex::encode(pin.key), pin.entry)),
            });
        }
        let request = self.open_request(at, id)?;
        let opened_at = request.opened_at;
        if user != request.subject {
            return Err(at.mismatch(id, "subject", user, &request.subject, opened_at));
        }
        let reset_kind = ApprovalKind::IdentityReset.name();
        if request.kind != reset_kind {
            return Err(at.mismatch(id, "request-kind", reset_kind, &request.kind, opened_at));
        }
        if let Some(requested_key) = request.key
            && requested_key != old_key
        {
            let (found, expected) = (hex::encode(old_key), hex::encode(requested_key));
            return Err(at.mismatch(id, "old-key-sha256", &found, &expected, opened_at));
        }
        if requested_by != request.requested_by {
            return Err(at.mismatch(id, "requested-by", requested_by, &request.requested_by, opened_at));
        }
        let Some((approver, _)) = &request.approval else {
            return Err(ReplayFailure::NotApproved {
                index: at.index,
                user: user.to_owned(),
                request: id.to_owned(),
            });
        };
        if approved_by != approver {
            return Err(at.mismatch(id, "approved-by", approved_by, approver, opened_at));
        }
        self.check_unexpired(at, id, request)?;
        if key != old_key {
            self.check_unowned(at, key)?;
        }
        // Every check passed: the new key replaces the old one, and the request is spent.
        let user: Rc<str> = Rc::from(user);
        self.owners.remove(&old_key);
        self.owners.insert(key, Rc::clone(&user));
        self.pins.insert(user, Pin { key, entry: at.index });
        self.requests.remove(id);
        self.consumed.insert(id.to_owned(), at.index);
        self.counts.resets += 1;
        Ok(())
    }

    /// An escrow release or a recovery-key change: it must consume a request of `kind` with the
    /// same subject, opened by its `requested-by` and approved by its `approved-by` (another
    /// admin), unexpired and not consumed before; `key_detail`, when given, must name the request's
    /// key.
    fn approved_action(
        &mut self,
        at: &At<'_>,
        kind: ApprovalKind,
        key_detail: Option<&'static str>,
    ) -> Result<(), ReplayFailure> {
        let id = at.detail("request-id")?;
        let requested_by = at.detail("requested-by")?;
        let approved_by = at.detail("approved-by")?;
        let key = key_detail.map(|name| at.key(name)).transpose()?;
        let request = self.open_request(at, id)?;
        let opened_at = request.opened_at;
        if at.entry.subject != request.subject {
            return Err(at.mismatch(id, "subject", &at.entry.subject, &request.subject, opened_at));
        }
        if request.kind != kind.name() {
            return Err(at.mismatch(id, "request-kind", kind.name(), &request.kind, opened_at));
        }
        if let (Some(key), Some(requested_key)) = (key, request.key)
            && key != requested_key
        {
            let (found, expected) = (hex::encode(key), hex::encode(requested_key));
            return Err(at.mismatch(id, "key-sha256", &found, &expected, opened_at));
        }
        if requested_by != request.requested_by {
            return Err(at.mismatch(id, "requested-by", requested_by, &request.requested_by, opened_at));
        }
        let Some((approver, _)) = &request.approval else {
            return Err(ReplayFailure::ActionNotApproved {
                index: at.index,
                kind: at.kind,
                request: id.to_owned(),
            });
        };
        if approved_by != approver {
            return Err(at.mismatch(id, "approved-by", approved_by, approver, opened_at));
        }
        self.check_unexpired(at, id, request)?;
        self.requests.remove(id);
        self.consumed.insert(id.to_owned(), at.index);
        self.counts.approved_actions += 1;
        Ok(())
    }

    /// Checks that `key` is pinned to nobody (before `at` pins it).
    fn check_unowned(&self, at: &At<'_>, key: Key) -> Result<(), ReplayFailure> {
        match self.owners.get(&key) {
            Some(owner) => Err(ReplayFailure::KeyPinnedElsewhere {
                index: at.index,
                kind: at.kind,
                user: at.entry.subject.clone(),
                key: hex::encode(key),
                owner: owner.to_string(),
                // `owners` and `pins` change together, so the owner's pin is there.
                pinned_at: self.pins.get(owner).map_or(0, |pin| pin.entry),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;

    fn key(byte: u8) -> String {
        hex::encode([byte; 32])
    }

    fn entry(kind: AuditKind, actor: &str, subject: &str, details: &[(&'static str, String)]) -> ParsedEntry {
        let event = AuditEvent {
            kind,
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            details: details.to_vec(),
        };
        ParsedEntry::parse(&event.encode().bytes).expect("parses")
    }

    fn issuance(user: &str, key_byte: u8) -> ParsedEntry {
        entry(
            AuditKind::Issuance,
            "sync-server",
            user,
            &[("key-sha256", key(key_byte))],
        )
    }

    fn renewal(user: &str, key_byte: u8) -> ParsedEntry {
        entry(
            AuditKind::Renewal,
            "sync-server",
            user,
            &[("key-sha256", key(key_byte))],
        )
    }

    fn opened(id: &str, user: &str, by: &str, key_byte: u8, expires: OffsetDateTime) -> ParsedEntry {
        entry(
            AuditKind::RequestOpened,
            by,
            user,
            &[
                ("request-id", id.to_owned()),
                ("request-kind", "identity-reset".to_owned()),
                ("reason", "lost laptop".to_owned()),
                ("expires", crate::audit::rfc3339(expires)),
                ("key-sha256", key(key_byte)),
            ],
        )
    }

    fn approved(id: &str, user: &str, requested_by: &str, by: &str) -> ParsedEntry {
        entry(
            AuditKind::RequestApproved,
            by,
            user,
            &[
                ("request-id", id.to_owned()),
                ("request-kind", "identity-reset".to_owned()),
                ("requested-by", requested_by.to_owned()),
            ],
        )
    }

    fn reset(id: &str, user: &str, old: u8, new: u8, requested_by: &str, approved_by: &str) -> ParsedEntry {
        entry(
            AuditKind::IdentityReset,
            "sync-server",
            user,
            &[
                ("key-sha256", key(new)),
                ("old-key-sha256", key(old)),
                ("request-id", id.to_owned()),
                ("requested-by", requested_by.to_owned()),
                ("approved-by", approved_by.to_owned()),
            ],
        )
    }

    fn later() -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::hours(1)
    }

    /// Replays `entries` from index 0.
    fn check(entries: &[ParsedEntry]) -> Result<HistoryCounts, ReplayFailure> {
        let mut replay = Replay::new(Duration::from_secs(1));
        for (index, entry) in (0u64..).zip(entries) {
            replay.apply(index, entry)?;
        }
        Ok(replay.counts())
    }

    /// A's pin, B's, an approved reset of A's, A's released key pinned to C, and entries that
    /// change no pin.
    fn honest() -> Vec<ParsedEntry> {
        vec![
            issuance("alice", 1),
            renewal("alice", 1),
            issuance("bob", 2),
            entry(
                AuditKind::IssuanceRefused,
                "sync-server",
                "alice",
                &[("key-sha256", key(3))],
            ),
            opened("r1", "alice", "admin-a", 1, later()),
            approved("r1", "alice", "admin-a", "admin-b"),
            reset("r1", "alice", 1, 3, "admin-a", "admin-b"),
            renewal("alice", 3),
            issuance("carol", 1),
            entry(AuditKind::RefusalsSummarized, "sync-server", "sync-server", &[]),
        ]
    }

    #[test]
    fn an_honest_history_replays_and_is_counted() {
        let counts = check(&honest()).expect("replays");
        assert_eq!(
            counts,
            HistoryCounts {
                users: 3,
                pins: 3,
                renewals: 2,
                resets: 1,
                requests: 1,
                approvals: 1,
                approved_actions: 0,
                other: 2,
            }
        );
    }

    #[test]
    fn an_escrow_release_must_consume_a_request_another_admin_approved_once() {
        let release_opened = |by: &str| {
            entry(
                AuditKind::RequestOpened,
                by,
                "alice",
                &[
                    ("request-id", "e1".to_owned()),
                    ("request-kind", "escrow-release".to_owned()),
                    ("reason", "lost every device".to_owned()),
                    ("expires", crate::audit::rfc3339(later())),
                    ("key-sha256", key(7)),
                ],
            )
        };
        let release_approved = entry(
            AuditKind::RequestApproved,
            "admin-b",
            "alice",
            &[
                ("request-id", "e1".to_owned()),
                ("request-kind", "escrow-release".to_owned()),
                ("requested-by", "admin-a".to_owned()),
            ],
        );
        let released = |recovery_key: u8, approved_by: &str| {
            entry(
                AuditKind::EscrowReleased,
                "admin-a",
                "alice",
                &[
                    ("request-id", "e1".to_owned()),
                    ("requested-by", "admin-a".to_owned()),
                    ("approved-by", approved_by.to_owned()),
                    ("recovery-key-sha256", key(recovery_key)),
                    ("escrow-sha256", key(9)),
                ],
            )
        };
        let honest = vec![
            issuance("alice", 1),
            release_opened("admin-a"),
            release_approved.clone(),
            released(7, "admin-b"),
        ];
        assert_eq!(check(&honest).expect("replays").approved_actions, 1);
        let cases = [
            (
                vec![issuance("alice", 1), release_opened("admin-a"), released(7, "admin-b")],
                2,
                "which was never approved",
            ),
            (
                vec![
                    issuance("alice", 1),
                    release_opened("admin-a"),
                    release_approved.clone(),
                    released(8, "admin-b"),
                ],
                3,
                "has key-sha256",
            ),
            (
                vec![
                    issuance("alice", 1),
                    release_opened("admin-a"),
                    release_approved.clone(),
                    released(7, "admin-c"),
                ],
                3,
                "has approved-by \"admin-c\"",
            ),
            (
                [honest.clone(), vec![released(7, "admin-b")]].concat(),
                4,
                "which the entry at 3 already consumed",
            ),
        ];
        for (entries, index, fragment) in cases {
            let failure = check(&entries).expect_err(fragment).to_string();
            assert!(failure.starts_with(&format!("entry {index}:")), "{failure}");
            assert!(failure.contains(fragment), "{failure}");
        }
    }

    #[test]
    fn every_unapproved_or_inconsistent_key_change_is_named_by_its_index() {
        let head = || honest()[..6].to_vec(); // up to the approval of r1
        let with = |mut entries: Vec<ParsedEntry>, more: Vec<ParsedEntry>| {
            entries.extend(more);
            entries
        };
        let cases: Vec<(Vec<ParsedEntry>, u64, &str)> = vec![
            (
                vec![issuance("alice", 1), issuance("alice", 9)],
                1,
                "already pinned to key",
            ),
            (
                vec![issuance("alice", 1), issuance("bob", 1)],
                1,
                "that key is pinned to alice",
            ),
            (vec![renewal("alice", 1)], 0, "who has no pinned key"),
            (
                vec![issuance("alice", 1), renewal("alice", 9)],
                1,
                "alice's pinned key is",
            ),
            (
                vec![entry(AuditKind::Issuance, "sync-server", "alice", &[])],
                0,
                "has no key-sha256 detail",
            ),
            (
                vec![issuance("alice", 1), reset("r9", "alice", 1, 3, "admin-a", "admin-b")],
                1,
                "which no earlier request-opened entry opened",
            ),
            (
                with(
                    head()[..5].to_vec(),
                    vec![reset("r1", "alice", 1, 3, "admin-a", "admin-b")],
                ),
                5,
                "which was never approved",
            ),
            (
                with(
                    head()[..5].to_vec(),
                    vec![approved("r1", "alice", "admin-a", "admin-a")],
                ),
                5,
                "approved by admin-a, who opened it",
            ),
            (
                with(head()[..5].to_vec(), vec![approved("r1", "bob", "admin-a", "admin-b")]),
                5,
                "has subject \"bob\"",
            ),
            (
                with(head(), vec![approved("r1", "alice", "admin-a", "admin-c")]),
                6,
                "is approved again (first approved at entry 5)",
            ),
            (
                with(head(), vec![reset("r1", "alice", 2, 3, "admin-a", "admin-b")]),
                6,
                "replaces key",
            ),
            (
                with(head(), vec![reset("r1", "alice", 1, 2, "admin-a", "admin-b")]),
                6,
                "that key is pinned to bob",
            ),
            (
                with(head(), vec![reset("r1", "alice", 1, 3, "admin-a", "admin-c")]),
                6,
                "has approved-by \"admin-c\"",
            ),
            (
                with(
                    head(),
                    vec![
                        reset("r1", "alice", 1, 3, "admin-a", "admin-b"),
                        reset("r1", "alice", 3, 4, "admin-a", "admin-b"),
                    ],
                ),
                7,
                "which the entry at 6 already consumed",
            ),
            (
                vec![
                    issuance("alice", 1),
                    opened(
                        "r1",
                        "alice",
                        "admin-a",
                        1,
                        OffsetDateTime::now_utc() - time::Duration::hours(1),
                    ),
                    approved("r1", "alice", "admin-a", "admin-b"),
                ],
                2,
                "after the request expired",
            ),
            (
                vec![
                    issuance("alice", 1),
                    opened("r1", "alice", "admin-a", 1, later()),
                    opened("r1", "alice", "admin-a", 1, later()),
                ],
                2,
                "is opened again",
            ),
        ];
        for (entries, index, fragment) in cases {
            let failure = check(&entries).expect_err(fragment);
            let text = failure.to_string();
            assert!(text.starts_with(&format!("entry {index}: ")), "{fragment}: {text}");
            assert!(text.contains(fragment), "{fragment}: {text}");
        }
    }
}
