//! The few stream-level elements Custos writes itself: its own stream headers (it is the
//! receiving entity toward the client and the initiating entity toward the server,
//! RFC 6120 §4), STARTTLS negotiation, stream errors (§4.9) and stanza errors (§8.3).

use quick_xml::escape::escape;

pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_SM: &str = "urn:xmpp:sm:3";

pub const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
pub const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
pub const CLOSE: &[u8] = b"</stream:stream>";

/// Features offered to a client before TLS: nothing but mandatory STARTTLS, so no
/// credential ever crosses the client leg in clear.
pub const STARTTLS_FEATURES: &[u8] = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";

/// Attributes of a stream header written by Custos.
#[derive(Debug, Clone, Default)]
pub struct HeaderAttrs<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub id: Option<&'a str>,
    pub lang: Option<&'a str>,
}

/// A `jabber:client` stream header with the `stream` prefix, as every XMPP
/// implementation expects.
///
/// No XML declaration: it is optional (RFC 6120 §11.5), and after a restart it would be
/// not-well-formed if a whitespace keepalive from the peer reached the other side first
/// (a declaration must be the very first bytes of an entity).
pub fn header(attrs: &HeaderAttrs<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(200);
    out.push_str("<stream:stream");
    for (name, value) in [
        ("from", attrs.from),
        ("to", attrs.to),
        ("id", attrs.id),
        ("xml:lang", attrs.lang),
    ] {
        if let Some(value) = value {
            out.push(' ');
            out.push_str(name);
            out.push_str("='");
            out.push_str(&escape(value));
            out.push('\'');
        }
    }
    out.push_str(
        " version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    out.into_bytes()
}

/// A stream error followed by the closing tag: the last thing written on a failed stream.
pub fn stream_error(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut out = String::with_capacity(200);
    out.push_str("<stream:error><");
    out.push_str(condition);
    out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    if let Some(text) = text {
        out.push_str("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>");
        out.push_str(&escape(text));
        out.push_str("</text>");
    }
    out.push_str("</stream:error></stream:stream>");
    out.into_bytes()
}

/// A fresh stream id for headers Custos answers itself (RFC 6120 §4.7.3 wants it
/// unpredictable).
pub fn new_stream_id() -> String {
    use std::fmt::Write;
    let bytes: [u8; 12] = rand::random();
    bytes.iter().fold(String::with_capacity(24), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_escapes_attribute_values() {
        let h = header(&HeaderAttrs {
            from: Some("ex'ample.test"),
            id: Some("a<b"),
            ..Default::default()
        });
        let h = String::from_utf8(h).unwrap();
        assert!(h.contains("from='ex&apos;ample.test'"), "{h}");
        assert!(h.contains("id='a&lt;b'"), "{h}");
        assert!(h.ends_with("xmlns:stream='http://etherx.jabber.org/streams'>"));
    }

    #[test]
    fn stream_error_carries_condition_and_text() {
        let e = String::from_utf8(stream_error("policy-violation", Some("too <big>"))).unwrap();
        assert_eq!(
            e,
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>too &lt;big&gt;</text>\
             </stream:error></stream:stream>"
        );
    }

    #[test]
    fn stream_ids_are_fresh() {
        assert_ne!(new_stream_id(), new_stream_id());
        assert_eq!(new_stream_id().len(), 24);
    }
}
