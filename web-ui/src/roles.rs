//! The role matrix: every route names one [`Perm`], and this table alone says
//! which roles hold it. Router tests walk every route × role against it.

use crate::users::Role;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// Search, read conversations, see the dashboard and the queue, export.
    Read,
    /// Change review state: assign, mark reviewed / escalated / false positive.
    Review,
    /// See the audit trail of reviewer activity.
    Audit,
    /// Add and remove accounts.
    ManageUsers,
    /// Place, change and release legal holds.
    Hold,
    /// Run a data subject's erasure report.
    Erasure,
}

/// Whether `role` holds `perm`.
///
/// Admins do not review: separating account management from review keeps a
/// single person from creating an account and using it to clear their own
/// flags. Auditors read everything, the audit trail included, and change nothing.
pub fn allows(role: Role, perm: Perm) -> bool {
    match perm {
        Perm::Read => true,
        Perm::Review => role == Role::Officer,
        Perm::Audit => matches!(role, Role::Admin | Role::Auditor),
        Perm::ManageUsers => role == Role::Admin,
        // Officers run matters; admins may act for legal. Auditors only read.
        Perm::Hold => matches!(role, Role::Officer | Role::Admin),
        Perm::Erasure => role == Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auditors_change_nothing() {
        assert!(allows(Role::Auditor, Perm::Read));
        assert!(!allows(Role::Auditor, Perm::Review));
        assert!(!allows(Role::Auditor, Perm::ManageUsers));
        assert!(allows(Role::Officer, Perm::Review));
        assert!(!allows(Role::Officer, Perm::Audit));
        assert!(allows(Role::Admin, Perm::ManageUsers));
        assert!(!allows(Role::Admin, Perm::Review));
        assert!(allows(Role::Officer, Perm::Hold));
        assert!(allows(Role::Admin, Perm::Hold));
        assert!(!allows(Role::Auditor, Perm::Hold));
        assert!(allows(Role::Admin, Perm::Erasure));
        assert!(!allows(Role::Officer, Perm::Erasure));
        assert!(!allows(Role::Auditor, Perm::Erasure));
    }
}
