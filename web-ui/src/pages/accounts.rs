//! The accounts page's markup.

use maud::{html, Markup};

use crate::auth::Session;
use crate::users::{self, Role};

/// The accounts, a form to add one, and what went wrong with the last change.
pub fn accounts(session: &Session, list: &[users::User], error: Option<&str>) -> Markup {
    html! {
        h1 { "Accounts" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        table.results.compact {
            thead { tr { th { "Name" } th { "Role" } th { "Linked XMPP accounts" } th {} } }
            tbody {
                @for u in list {
                    tr {
                        td { (u.name) } td { span.role { (u.role.as_str()) } } td.jid { (u.jids.join(", ")) }
                        td { @if u.name != session.user {
                            form.inline method="post" action="/users/remove" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                input type="hidden" name="name" value=(u.name);
                                button.small.danger type="submit" { "Remove" }
                            }
                        } }
                    }
                }
            }
        }
        section.card.narrow {
            h2 { "Add an account" }
            form method="post" action="/users" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Name" input name="name" required; }
                label { "Role" select name="role" { @for r in Role::ALL { option value=(r.as_str()) { (r.as_str()) } } } }
                label { "Password (at least " (users::MIN_PASSWORD_LEN) " characters)" input type="password" name="password" autocomplete="new-password" required; }
                label { "XMPP accounts this person uses (comma-separated; they cannot review these)" input name="jids" placeholder="alice@example.test"; }
                button.primary type="submit" { "Add account" }
            }
        }
    }
}
