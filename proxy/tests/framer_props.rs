//! Property tests of the framer: chunking never changes the frames, the
//! trees agree with an independent XML parser (roxmltree), serialisation
//! round-trips, and arbitrary bytes never panic the fuzzing entry point.

use bytes::{Bytes, BytesMut};
use custos_proxy::framer::{fuzz_framer, Frame, FrameError, FrameLimits, Framer};
use custos_proxy::xml::{parse_element, Element, Node, XML_NS};
use proptest::prelude::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";

/// A generated element, written out by [`write_gen`].
#[derive(Debug, Clone)]
struct Gen {
    name: &'static str,
    ns_decl: Option<&'static str>,
    attrs: Vec<(&'static str, String)>,
    double_quotes: bool,
    children: Vec<GenNode>,
}

#[derive(Debug, Clone)]
enum GenNode {
    El(Gen),
    Text(String),
    CData(String),
}

/// Hostile text: markup characters, quotes, `]]` pieces, multi-byte UTF-8.
fn text() -> impl Strategy<Value = String> {
    "[a-z <>&'\"\\]/=\u{e9}\u{4e2d}\u{1F600}\n\t]{0,16}"
}

fn gen_element() -> impl Strategy<Value = Gen> {
    let leaf = (
        prop::sample::select(vec!["body", "x", "item", "a-b", "c.d", "e_f"]),
        prop::option::of(prop::sample::select(vec![
            "urn:a",
            "urn:b",
            "jabber:client",
        ])),
        prop::collection::vec(
            (
                prop::sample::select(vec!["id", "to", "type", "xml:lang", "v"]),
                text(),
            ),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(name, ns_decl, mut attrs, double_quotes)| {
            // Drop duplicate attribute names: those are tested elsewhere.
            let mut seen = Vec::new();
            attrs.retain(|(k, _)| {
                let fresh = !seen.contains(k);
                seen.push(*k);
                fresh
            });
            Gen {
                name,
                ns_decl,
                attrs,
                double_quotes,
                children: Vec::new(),
            }
        });
    leaf.prop_recursive(4, 32, 5, |inner| {
        (
            inner.clone(),
            prop::collection::vec(
                prop_oneof![
                    inner.prop_map(GenNode::El),
                    text().prop_map(GenNode::Text),
                    text().prop_map(|t| GenNode::CData(t.replace("]]>", "]] >"))),
                ],
                0..5,
            ),
        )
            .prop_map(|(mut el, children)| {
                el.children = children;
                el
            })
    })
}

fn stanza() -> impl Strategy<Value = Gen> {
    (
        gen_element(),
        prop::sample::select(vec!["message", "presence", "iq", "r"]),
    )
        .prop_map(|(mut g, name)| {
            g.name = name;
            if name == "r" {
                g.ns_decl = Some("urn:xmpp:sm:3");
            }
            g
        })
}

fn escape_text(t: &str) -> String {
    // Only the '>' of a ']]>' must be escaped; leaving other '>' raw tests
    // that the framer does not take them for markup.
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace("]]>", "]]&gt;")
}

fn write_gen(g: &Gen, out: &mut String) {
    let q = if g.double_quotes { '"' } else { '\'' };
    out.push('<');
    out.push_str(g.name);
    if let Some(ns) = g.ns_decl {
        out.push_str(&format!(" xmlns={q}{ns}{q}"));
    }
    for (k, v) in &g.attrs {
        let v = v.replace('&', "&amp;").replace('<', "&lt;");
        let v = if g.double_quotes {
            v.replace('"', "&quot;")
        } else {
            v.replace('\'', "&apos;")
        };
        out.push_str(&format!(" {k}={q}{v}{q}"));
    }
    if g.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    // Adjacent text nodes are one run of character data in XML: escape them together,
    // or "]]" followed by ">" would write the forbidden "]]>" (found by proptest).
    let mut text = String::new();
    for c in &g.children {
        if let GenNode::Text(t) = c {
            text.push_str(t);
            continue;
        }
        out.push_str(&escape_text(&std::mem::take(&mut text)));
        match c {
            GenNode::El(e) => write_gen(e, out),
            GenNode::Text(_) => {}
            GenNode::CData(t) => {
                out.push_str("<![CDATA[");
                out.push_str(t);
                out.push_str("]]>");
            }
        }
    }
    out.push_str(&escape_text(&text));
    out.push_str("</");
    out.push_str(g.name);
    out.push('>');
}

fn gen_xml(g: &Gen) -> String {
    let mut s = String::new();
    write_gen(g, &mut s);
    s
}

/// Frames `input` pushed in pieces of the given sizes (cycled), merging
/// adjacent whitespace frames since keepalives are handed out as they come.
fn frame_all(input: &[u8], sizes: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut framer = Framer::new(FrameLimits::default());
    let mut frames: Vec<Frame> = Vec::new();
    let mut at = 0;
    let mut k = 0;
    let mut error = None;
    while at < input.len() && error.is_none() {
        let size = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        k += 1;
        let end = (at + size).min(input.len());
        framer.push(&input[at..end]);
        at = end;
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Whitespace(w))) => {
                    if let Some(Frame::Whitespace(prev)) = frames.last_mut() {
                        let mut joined = BytesMut::from(&prev[..]);
                        joined.extend_from_slice(&w);
                        *prev = joined.freeze();
                    } else {
                        frames.push(Frame::Whitespace(w));
                    }
                }
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    (frames, error)
}

fn whitespace() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,3}"
}

/// Endings that make the stream fail or end, so splitting is also checked
/// for errors.
fn ending() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "</stream:stream>",
        "<!-- c -->",
        "<message><body>&xxe;</body></message>",
        "<message>\u{1}</message>",
        "<message></iq>",
        "oops",
        "<message><body>\u{E9}",
    ])
}

/// The stream text and the stanza texts it holds.
fn stream() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        prop::collection::vec((whitespace(), stanza()), 0..6),
        whitespace(),
        ending(),
    )
        .prop_map(|(parts, tail, end)| {
            let mut s = HEADER.to_owned();
            let mut stanzas = Vec::new();
            for (ws, g) in parts {
                s.push_str(&ws);
                let x = gen_xml(&g);
                s.push_str(&x);
                stanzas.push(x);
            }
            s.push_str(&tail);
            s.push_str(end);
            (s, stanzas)
        })
}

/// A comparable tree from roxmltree: name, namespace, attributes (without
/// namespace declarations) as (local, ns, value), and merged child nodes.
#[derive(Debug, PartialEq)]
enum Cmp {
    El {
        name: String,
        ns: String,
        attrs: Vec<(String, String, String)>,
        children: Vec<Cmp>,
    },
    Text(String),
}

fn cmp_from_rox(node: roxmltree::Node) -> Cmp {
    let mut children: Vec<Cmp> = Vec::new();
    for c in node.children() {
        if c.is_element() {
            children.push(cmp_from_rox(c));
        } else if let Some(t) = c.text() {
            if let Some(Cmp::Text(prev)) = children.last_mut() {
                prev.push_str(t);
            } else if !t.is_empty() {
                children.push(Cmp::Text(t.to_owned()));
            }
        }
    }
    Cmp::El {
        name: node.tag_name().name().to_owned(),
        ns: node.tag_name().namespace().unwrap_or("").to_owned(),
        attrs: node
            .attributes()
            .map(|a| {
                (
                    a.name().to_owned(),
                    a.namespace().unwrap_or("").to_owned(),
                    a.value().to_owned(),
                )
            })
            .collect(),
        children,
    }
}

fn cmp_from_ours(el: &Element) -> Cmp {
    Cmp::El {
        name: el.name.to_string(),
        ns: el.ns.to_string(),
        attrs: el
            .attrs
            .iter()
            .filter(|(k, _)| k != "xmlns" && !k.starts_with("xmlns:"))
            .map(|(k, v)| match k.strip_prefix("xml:") {
                Some(local) => (local.to_owned(), XML_NS.to_owned(), v.clone()),
                None => (k.to_string(), String::new(), v.clone()),
            })
            .collect(),
        children: el
            .children
            .iter()
            .map(|n| match n {
                Node::Element(e) => cmp_from_ours(e),
                Node::Text(t) => Cmp::Text(t.clone()),
            })
            .collect(),
    }
}

fn stanzas_of(frames: &[Frame]) -> Vec<&custos_proxy::framer::Stanza> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stanza(s) => Some(s),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn chunking_never_changes_the_frames(
        (input, _) in stream(),
        sizes in prop::collection::vec(1usize..24, 1..16),
    ) {
        let whole = frame_all(input.as_bytes(), &[input.len().max(1)]);
        let bytewise = frame_all(input.as_bytes(), &[1]);
        let chunked = frame_all(input.as_bytes(), &sizes);
        prop_assert_eq!(&whole, &bytewise);
        prop_assert_eq!(&whole, &chunked);
    }

    #[test]
    fn generated_stanzas_frame_exactly((input, stanzas) in stream()) {
        let (frames, _) = frame_all(input.as_bytes(), &[7]);
        let got = stanzas_of(&frames);
        // Every generated stanza comes out, byte for byte, in order.
        prop_assert!(got.len() >= stanzas.len());
        for (s, want) in got.iter().zip(&stanzas) {
            prop_assert_eq!(&s.raw[..], want.as_bytes());
        }
    }

    #[test]
    fn trees_agree_with_roxmltree(g in stanza()) {
        let x = gen_xml(&g);
        let doc_text = format!("{HEADER}{x}</stream:stream>");
        let doc = roxmltree::Document::parse(&doc_text);
        prop_assert!(doc.is_ok(), "roxmltree rejected {}: {:?}", doc_text, doc.err());
        let Ok(doc) = doc else { return Ok(()) };
        let rox = doc.root_element().first_element_child();
        prop_assert!(rox.is_some());
        let Some(rox) = rox else { return Ok(()) };

        let (frames, err) = frame_all(doc_text.as_bytes(), &[5, 1, 13]);
        prop_assert_eq!(err, None);
        let got = stanzas_of(&frames);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(cmp_from_ours(&got[0].root), cmp_from_rox(rox));
    }

    #[test]
    fn serialisation_round_trips(g in stanza()) {
        let x = gen_xml(&g);
        let mut framer = Framer::new(FrameLimits::default());
        framer.push(HEADER.as_bytes());
        framer.push(x.as_bytes());
        prop_assert!(matches!(framer.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let Ok(Some(Frame::Stanza(s))) = framer.next_frame() else {
            return Err(TestCaseError::fail("no stanza"));
        };
        let scope = framer.scope().cloned().unwrap_or_default();
        let out = String::from_utf8(s.root.to_bytes());
        prop_assert!(out.is_ok());
        let out = out.unwrap_or_default();
        prop_assert_eq!(parse_element(&out, &scope), Ok(s.root.clone()));
        // And the written form is itself framed the same way.
        let mut again = Framer::new(FrameLimits::default());
        again.push(HEADER.as_bytes());
        again.push(out.as_bytes());
        let _ = again.next_frame();
        let Ok(Some(Frame::Stanza(s2))) = again.next_frame() else {
            return Err(TestCaseError::fail("re-serialised stanza not framed"));
        };
        prop_assert_eq!(s2.root, s.root);
    }

    #[test]
    fn fuzz_entry_survives_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz_framer(&data);
    }

    #[test]
    fn fuzz_entry_survives_mutated_streams(
        (input, _) in stream(),
        seed in any::<u8>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut data = vec![seed];
        data.extend_from_slice(input.as_bytes());
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        fuzz_framer(&data);
    }
}

#[test]
fn hostile_content_is_escaped_on_write() {
    let mut framer = Framer::new(FrameLimits::default());
    framer.push(HEADER.as_bytes());
    framer.push(
        b"<message id=\"&quot;'&lt;/message&gt;\"><body>&lt;script&gt;alert(1)&lt;/script&gt; ]]&gt; \
          <![CDATA[</body>]]></body></message>",
    );
    let _ = framer.next_frame();
    let Ok(Some(Frame::Stanza(s))) = framer.next_frame() else {
        panic!("no stanza");
    };
    let body = s.root.child("body", "jabber:client").map(Element::text);
    assert_eq!(
        body.as_deref(),
        Some("<script>alert(1)</script> ]]> </body>")
    );
    let out = String::from_utf8(s.root.to_bytes()).unwrap_or_default();
    assert_eq!(
        out,
        "<message id='&quot;&apos;&lt;/message&gt;'><body>&lt;script&gt;alert(1)&lt;/script&gt; \
         ]]&gt; &lt;/body&gt;</body></message>"
    );
}

#[test]
fn many_stanzas_in_one_push() {
    let mut input = HEADER.to_owned();
    for i in 0..100 {
        input.push_str(&format!("<message id='{i}'><body>{i}</body></message> "));
    }
    let (frames, err) = frame_all(input.as_bytes(), &[input.len()]);
    assert_eq!(err, None);
    let ids: Vec<String> = stanzas_of(&frames)
        .iter()
        .filter_map(|s| s.root.attr("id").map(str::to_owned))
        .collect();
    assert_eq!(ids, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Whitespace(_)))
            .count(),
        100
    );
    assert_eq!(
        frames.last(),
        Some(&Frame::Whitespace(Bytes::from_static(b" ")))
    );
}
