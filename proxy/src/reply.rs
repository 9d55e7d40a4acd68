//! Stanza errors Custos writes back to a sender (RFC 6120 §8.3): a refused message,
//! presence or request gets an error of the same kind, addressed back to whoever sent it,
//! with the same `id` so the client can match it.

use crate::stream::NS_STANZA_ERRORS;
use crate::xml::Element;

/// RFC 6120 §8.3.2 error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Retry after changing the data (a policy violation).
    Modify,
    /// Retry later (the archive could not write).
    Wait,
    Cancel,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
            ErrorType::Cancel => "cancel",
        }
    }
}

/// The error reply to `original`, or `None` where none may be sent: errors are never
/// answered with errors, and an iq result needs no answer (RFC 6120 §8.3.1, §8.2.3),
/// which keeps two refusing parties from ping-ponging forever.
///
/// `sender` is the full address of the sender when the stanza omits `from` (a client's
/// own stanzas), `recipient` the address to answer from when it omits `to`.
pub fn stanza_error(
    original: &Element,
    sender: Option<&str>,
    recipient: Option<&str>,
    error_type: ErrorType,
    condition: &str,
    text: Option<&str>,
) -> Option<Vec<u8>> {
    let kind = &*original.name;
    if !matches!(kind, "message" | "presence" | "iq") {
        return None;
    }
    let original_type = original.attr("type");
    if original_type == Some("error") || (kind == "iq" && original_type == Some("result")) {
        return None;
    }
    let mut reply =
        Element::new(original.name.clone(), original.ns.clone()).with_attr("type", "error");
    if let Some(id) = original.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = original.attr("to").or(recipient) {
        reply.set_attr("from", from);
    }
    if let Some(to) = original.attr("from").or(sender) {
        reply.set_attr("to", to);
    }
    let mut error = Element::new("error", original.ns.clone())
        .with_attr("type", error_type.as_str())
        .with_child(Element::new(condition.to_owned(), NS_STANZA_ERRORS));
    if let Some(text) = text {
        error.push_child(
            Element::new("text", NS_STANZA_ERRORS)
                .with_attr("xml:lang", "en")
                .with_text(text),
        );
    }
    // A refused room entry keeps its MUC element (without its contents, a password
    // among them), as rooms answer: clients match the error to their entry by it.
    if kind == "presence" && original.child("x", crate::rooms::NS_MUC).is_some() {
        reply.push_child(Element::new("x", crate::rooms::NS_MUC));
    }
    reply.push_child(error);
    let mut out = Vec::with_capacity(256);
    reply.write_to(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::NS_CLIENT;

    fn message(attrs: &[(&str, &str)]) -> Element {
        let mut el = Element::new("message", NS_CLIENT);
        for (k, v) in attrs {
            el.set_attr(k.to_string(), *v);
        }
        el
    }

    #[test]
    fn policy_violation_goes_back_to_the_sender_with_the_same_id() {
        let original = message(&[("to", "bob@example.test"), ("id", "m1"), ("type", "chat")]);
        let reply = stanza_error(
            &original,
            Some("alice@example.test/laptop"),
            None,
            ErrorType::Modify,
            "policy-violation",
            Some("Card numbers <may> not be sent"),
        )
        .unwrap();
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.starts_with("<message"), "{reply}");
        assert!(
            reply.contains("type=\"error\"") || reply.contains("type='error'"),
            "{reply}"
        );
        assert!(
            reply.contains("from=\"bob@example.test\"")
                || reply.contains("from='bob@example.test'"),
            "{reply}"
        );
        assert!(reply.contains("alice@example.test/laptop"), "{reply}");
        assert!(reply.contains("m1"), "{reply}");
        assert!(
            reply.contains("<policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>")
                || reply
                    .contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{reply}"
        );
        assert!(
            reply.contains("Card numbers &lt;may&gt; not be sent"),
            "{reply}"
        );
    }

    #[test]
    fn errors_and_results_are_never_answered() {
        assert!(stanza_error(
            &message(&[("type", "error")]),
            None,
            None,
            ErrorType::Modify,
            "policy-violation",
            None
        )
        .is_none());
        let result = Element::new("iq", NS_CLIENT).with_attr("type", "result");
        assert!(stanza_error(
            &result,
            None,
            None,
            ErrorType::Modify,
            "policy-violation",
            None
        )
        .is_none());
        let get = Element::new("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "q");
        assert!(stanza_error(
            &get,
            None,
            None,
            ErrorType::Modify,
            "policy-violation",
            None
        )
        .is_some());
    }
}
