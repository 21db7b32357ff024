//! The clock the CA's policy reads: passed in, so that tests can hold time still and move it.
//!
//! Everything that decides by the time of day (the rate limit's 24-hour window, certificate
//! validity, and the approvals' expiry to come) asks a `Clock`, never the system directly. Audit
//! entries and database rows record the system time at which they were written; they decide nothing.

use time::OffsetDateTime;

/// The time of day, as the policy sees it.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock: what the service uses.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
