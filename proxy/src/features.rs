//! What of the upstream's stream features a client may be offered through Custos.
//!
//! The proxy terminates TLS on both legs, so anything bound to one TLS session cannot
//! survive the hop, and anything that would hide stanzas from inspection must not be
//! negotiated:
//! - SCRAM-*-PLUS and XEP-0440 channel-binding types: the client's channel binding data
//!   describes the client↔proxy TLS session, which the server never sees.
//! - SASL EXTERNAL: the client's certificate ends at Custos; the server would see only
//!   Custos's side of the upstream TLS session.
//! - Stream compression (XEP-0138): compressed stanzas cannot be framed or inspected.
//! - Inside SASL2's `<authentication/>` (XEP-0388), the same mechanisms, and the FAST
//!   (XEP-0484) mechanisms bound to the TLS channel (`HT-*-UNIQ`, `-EXPR`, `-ENDP`); SASL2
//!   itself, Bind2 (XEP-0386) and inline stream management pass, and the session's JID is
//!   learnt from the SASL2 success (see `relay_state`).
//! - STARTTLS: the client leg is already encrypted by Custos; an upstream offer only
//!   describes the proxy's own leg.
//! - Stream management in its older namespace (`urn:xmpp:sm:2`): Custos translates the
//!   counts of `urn:xmpp:sm:3` only (and refuses other stream-level elements).

use crate::xml::{Element, Node};

const NS_COMPRESS_FEATURE: &str = "http://jabber.org/features/compress";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_SASL2: &str = "urn:xmpp:sasl:2";
const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";
const NS_FAST: &str = "urn:xmpp:fast:0";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// XEP-0198's older namespace: Custos keeps counts right in `urn:xmpp:sm:3` only, so
/// clients are offered that one.
const NS_SM2: &str = "urn:xmpp:sm:2";

/// Whether a SASL mechanism can authenticate across the two TLS sessions: not when it
/// is bound to the client's TLS session (`-PLUS`, FAST's `HT-*-UNIQ`/`-EXPR`/`-ENDP`) or
/// its certificate (`EXTERNAL`); a missing name is refused too.
pub fn mechanism_crosses(name: &str) -> bool {
    let name = name.trim().to_ascii_uppercase();
    let channel_bound_fast = name.starts_with("HT-")
        && ["-UNIQ", "-EXPR", "-ENDP"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
    !(name.is_empty() || name == "EXTERNAL" || name.ends_with("-PLUS") || channel_bound_fast)
}

/// Removes the features Custos cannot carry. Returns whether anything was removed, so an
/// unchanged element can still be forwarded as the bytes the server sent.
pub fn filter_features(features: &mut Element) -> bool {
    let before = count_elements(features);
    features.children.retain(|node| match node {
        Node::Element(child) => !matches!(
            &*child.ns,
            NS_COMPRESS_FEATURE | NS_SASL_CB | NS_TLS | NS_SM2
        ),
        Node::Text(_) => true,
    });
    for node in features.children.iter_mut() {
        if let Node::Element(child) = node {
            let sasl1 = child.name == "mechanisms" && child.ns == NS_SASL;
            let sasl2 = child.name == "authentication" && child.ns == NS_SASL2;
            if sasl1 || sasl2 {
                child.children.retain(|m| match m {
                    Node::Element(m) if m.name == "mechanism" => mechanism_crosses(&m.text()),
                    _ => true,
                });
            }
            if sasl2 {
                for inline in child.children_mut().filter(|c| c.name == "inline") {
                    for fast in inline.children_mut().filter(|c| c.ns == NS_FAST) {
                        fast.children.retain(|m| match m {
                            Node::Element(m) if m.name == "mechanism" => {
                                m.text().trim().ends_with("-NONE")
                            }
                            _ => true,
                        });
                    }
                    // FAST without a mechanism that can cross is not offered at all.
                    inline.children.retain(|n| match n {
                        Node::Element(f) if f.ns == NS_FAST => {
                            f.children().any(|m| m.name == "mechanism")
                        }
                        _ => true,
                    });
                }
            }
        }
    }
    count_elements(features) != before
}

fn count_elements(el: &Element) -> usize {
    el.children
        .iter()
        .map(|n| match n {
            Node::Element(e) => 1 + count_elements(e),
            Node::Text(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::{Frame, FrameLimits, Framer};

    fn features(xml: &str) -> Element {
        let mut framer = Framer::new(FrameLimits::default());
        framer.push(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        );
        framer.push(xml.as_bytes());
        let mut out = None;
        while let Some(frame) = framer.next_frame().expect("well-formed") {
            if let Frame::Stanza(s) = frame {
                out = Some(s.root);
            }
        }
        out.expect("a features element")
    }

    #[test]
    fn mechanisms_bound_to_the_client_tls_session_do_not_cross() {
        for m in [
            "EXTERNAL",
            "external",
            " SCRAM-SHA-1-PLUS ",
            "SCRAM-SHA-256-plus",
            "HT-SHA-256-EXPR",
            "ht-sha-256-uniq",
            "HT-SHA-256-ENDP",
            "",
        ] {
            assert!(!mechanism_crosses(m), "{m}");
        }
        for m in [
            "PLAIN",
            "SCRAM-SHA-1",
            "SCRAM-SHA-256",
            "X-OAUTH2",
            "PLUS",
            "HT-SHA-256-NONE",
        ] {
            assert!(mechanism_crosses(m), "{m}");
        }
    }

    #[test]
    fn external_is_not_offered() {
        let mut f = features(
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
             <mechanism>EXTERNAL</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
             </mechanisms></stream:features>",
        );
        assert!(filter_features(&mut f));
        assert_eq!(mechanisms(&f), ["SCRAM-SHA-1"]);
    }

    fn mechanisms(el: &Element) -> Vec<String> {
        el.child("mechanisms", NS_SASL)
            .map(|m| m.children().map(|c| c.text()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn strips_plus_mechanisms_compression_and_channel_binding() {
        let mut el = features(
            "<stream:features>\
               <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                 <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
                 <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>PLAIN</mechanism>\
               </mechanisms>\
               <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
               <authentication xmlns='urn:xmpp:sasl:2'><mechanism>PLAIN</mechanism></authentication>\
               <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>\
               <sm xmlns='urn:xmpp:sm:2'><optional/></sm><sm xmlns='urn:xmpp:sm:3'/>\
             </stream:features>",
        );
        assert!(filter_features(&mut el));
        assert_eq!(mechanisms(&el), vec!["SCRAM-SHA-256", "PLAIN"]);
        let names: Vec<_> = el.children().map(|c| c.name.clone()).collect();
        assert_eq!(names, vec!["mechanisms", "authentication", "sm"]);
        assert!(
            el.child("sm", "urn:xmpp:sm:2").is_none(),
            "only sm:3 offered"
        );
    }

    /// SASL2 passes with what can cross: its mechanisms filtered like SASL's, Bind2 and
    /// inline stream management kept, FAST only with mechanisms not bound to the channel.
    #[test]
    fn sasl2_keeps_what_crosses() {
        let mut el = features(
            "<stream:features><authentication xmlns='urn:xmpp:sasl:2'>\
               <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
               <mechanism>EXTERNAL</mechanism>\
               <inline><bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:sm:3'/></inline></bind>\
                 <sm xmlns='urn:xmpp:sm:3'/>\
                 <fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>\
               </inline></authentication></stream:features>",
        );
        assert!(filter_features(&mut el));
        let auth = el.child("authentication", NS_SASL2).expect("SASL2 kept");
        let mechs: Vec<String> = auth
            .children()
            .filter(|c| c.name == "mechanism")
            .map(|c| c.text())
            .collect();
        assert_eq!(mechs, ["SCRAM-SHA-256"]);
        let inline = auth.child("inline", "urn:xmpp:sasl:2").expect("inline");
        let kept: Vec<&str> = inline.children().map(|c| &*c.name).collect();
        assert_eq!(kept, ["bind", "sm", "fast"]);
        let fast: Vec<String> = inline
            .child("fast", NS_FAST)
            .map(|f| f.children().map(|m| m.text()).collect())
            .unwrap_or_default();
        assert_eq!(fast, ["HT-SHA-256-NONE"]);

        let mut only_bound = features(
            "<stream:features><authentication xmlns='urn:xmpp:sasl:2'><mechanism>PLAIN</mechanism>\
             <inline><fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-UNIQ</mechanism></fast></inline>\
             </authentication></stream:features>",
        );
        assert!(filter_features(&mut only_bound));
        let inline = only_bound
            .child("authentication", NS_SASL2)
            .and_then(|a| a.child("inline", "urn:xmpp:sasl:2"))
            .expect("inline");
        assert_eq!(inline.children().count(), 0, "no FAST left to offer");
    }

    #[test]
    fn leaves_plain_features_untouched() {
        let mut el = features(
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>",
        );
        assert!(!filter_features(&mut el));
        assert_eq!(el.children().count(), 2);
    }
}
