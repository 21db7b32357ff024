//! Revocation: the reasons an admin may give, and (in `crl`) the CRL signed by the CA key.

pub mod crl;

use std::fmt;

/// An RFC 5280 §5.3.1 reason code an admin may give. `unspecified` is not offered: every
/// revocation says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// keyCompromise (1).
    KeyCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4): a reset replaced the key.
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 code (the CRL entry's reasonCode, and what the stores keep).
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason with RFC 5280 code `code`, if it is one an admin may give.
    pub fn from_code(code: i64) -> Option<RevocationReason> {
        RevocationReason::ALL
            .into_iter()
            .find(|reason| i64::from(reason.code()) == code)
    }

    /// The RFC 5280 name, as the audit log records it.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_rfc_5280_codes() {
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::from_code(reason.code().into()), Some(reason));
        }
        for refused in [0, 2, 6, 7, 8, 10, -1] {
            assert_eq!(RevocationReason::from_code(refused), None, "code {refused}");
        }
        assert_eq!(RevocationReason::KeyCompromise.to_string(), "keyCompromise");
    }
}
