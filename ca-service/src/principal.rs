//! Who is calling: a `Principal` (a name and its roles), filled in for every request in one place
//! (`api::principal::Authenticator`) and recorded as the actor of every audit entry.

use std::fmt;

use serde::Deserialize;

/// What a principal may do. Services check roles; they never compare names.
/// Config files name roles as `sync-server`, `admin` and `auditor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The sync server: issues certificates for its users and looks them up.
    SyncServer,
    /// An enterprise admin: looks users up, revokes, approves identity resets.
    Admin,
    /// A compliance auditor: reads and exports the audit log.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::SyncServer, Role::Admin, Role::Auditor];

    /// The name used in config files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::SyncServer => "sync-server",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    name: String,
    roles: Vec<Role>,
}

impl Principal {
    /// The name every caller has while the service authenticates nobody (plaintext: dev
    /// `--plaintext` or `allow_plaintext`). Recorded as the actor.
    pub const UNAUTHENTICATED: &'static str = "unauthenticated";

    /// A principal named `name` with `roles`.
    pub fn new(name: impl Into<String>, roles: &[Role]) -> Principal {
        Principal {
            name: name.into(),
            roles: roles.to_vec(),
        }
    }

    /// The caller of a service that authenticates nobody: it holds `sync-server` only, so that the
    /// sync server's calls keep working behind a TLS-terminating proxy or in plaintext dev mode,
    /// while the roles that name a person or an audit duty (`admin`, `auditor`) need a certificate.
    pub fn unauthenticated() -> Principal {
        Principal::new(Principal::UNAUTHENTICATED, &[Role::SyncServer])
    }

    /// The principal's name: the actor of its audit entries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the principal holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The roles the principal holds.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unauthenticated_principal_holds_only_the_sync_server_role_under_its_recorded_name() {
        let principal = Principal::unauthenticated();
        assert_eq!(principal.name(), "unauthenticated");
        assert_eq!(principal.roles(), &[Role::SyncServer]);
        assert!(!principal.has(Role::Admin) && !principal.has(Role::Auditor));
        let admin = Principal::new("alice-admin", &[Role::Admin]);
        assert!(admin.has(Role::Admin) && !admin.has(Role::SyncServer) && !admin.has(Role::Auditor));
        assert_eq!(Role::SyncServer.to_string(), "sync-server");
    }
}
