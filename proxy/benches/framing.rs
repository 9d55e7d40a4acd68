//! Framing throughput on a realistic client-to-server and server-to-client
//! stanza mix: chat messages with bodies and receipts/markers, presence with
//! entity capabilities, roster results, carbons and MAM results.
//!
//! `cargo bench -p custos-proxy --bench framing` prints throughput in MiB/s
//! for framing alone and for framing plus building each stanza's view.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use custos_proxy::framer::{Frame, FrameLimits, Framer};
use custos_proxy::stanza::StanzaView;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0' xml:lang='en'>";

fn chat(i: usize) -> String {
    format!(
        "<message from='alice@example.test/laptop' to='bob@example.test' type='chat' id='m{i}'>\
         <body>Hi Bob, the quarterly numbers are in the shared folder; call me at 4 &amp; we'll go \
         through them (draft #{i}).</body><request xmlns='urn:xmpp:receipts'/>\
         <markable xmlns='urn:xmpp:chat-markers:0'/><origin-id xmlns='urn:xmpp:sid:0' id='o-{i}'/>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

fn receipt(i: usize) -> String {
    format!(
        "<message from='bob@example.test/phone' to='alice@example.test/laptop' id='r{i}'>\
         <received xmlns='urn:xmpp:receipts' id='m{i}'/>\
         <displayed xmlns='urn:xmpp:chat-markers:0' id='m{i}'/></message>"
    )
}

fn presence(i: usize) -> String {
    format!(
        "<presence from='carol@example.test/desk{i}'><show>away</show><status>In a meeting</status>\
         <priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://gajim.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>\
         <x xmlns='vcard-temp:x:update'><photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo></x>\
         </presence>"
    )
}

fn roster(i: usize) -> String {
    let mut s = format!(
        "<iq to='alice@example.test/laptop' type='result' id='roster{i}'>\
         <query xmlns='jabber:iq:roster' ver='ver{i}'>"
    );
    for n in 0..20 {
        s.push_str(&format!(
            "<item jid='contact{n}@example.org' name='Contact {n}' subscription='both'>\
             <group>Colleagues</group></item>"
        ));
    }
    s.push_str("</query></iq>");
    s
}

fn carbon(i: usize) -> String {
    format!(
        "<message from='alice@example.test' to='alice@example.test/laptop' type='chat'>\
         <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
         <message xmlns='jabber:client' from='alice@example.test/phone' to='dave@example.org' \
         type='chat' id='c{i}'><body>On my way, five minutes.</body>\
         <origin-id xmlns='urn:xmpp:sid:0' id='oc-{i}'/></message></forwarded></sent></message>"
    )
}

fn mam(i: usize) -> String {
    format!(
        "<message to='alice@example.test/laptop' id='q{i}'><result xmlns='urn:xmpp:mam:2' \
         queryid='f27' id='28482-98726-{i}'><forwarded xmlns='urn:xmpp:forward:0'>\
         <delay xmlns='urn:xmpp:delay' stamp='2026-07-10T23:08:25Z'/>\
         <message xmlns='jabber:client' from='eve@example.org/x' to='alice@example.test' type='chat'>\
         <body>Archived message number {i} with some text that is about as long as real ones.</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='28482-98726-{i}' by='alice@example.test'/>\
         </message></forwarded></result></message>"
    )
}

/// About 1 MiB of stream: header, then the mix with whitespace keepalives.
fn stream() -> (Vec<u8>, usize) {
    let mut s = String::from(HEADER);
    let mut stanzas = 0;
    let mut i = 0;
    while s.len() < 1 << 20 {
        for part in [
            chat(i),
            receipt(i),
            presence(i),
            carbon(i),
            mam(i),
            chat(i + 1),
        ] {
            s.push_str(&part);
            stanzas += 1;
        }
        if i % 10 == 0 {
            s.push_str(&roster(i));
            stanzas += 1;
        }
        s.push(' ');
        i += 1;
    }
    (s.into_bytes(), stanzas)
}

/// Frames the whole stream arriving in 4 KiB reads; returns the stanza count.
fn run(input: &[u8], view: bool) -> usize {
    let mut framer = Framer::new(FrameLimits::default());
    let mut stanzas = 0;
    for chunk in input.chunks(4096) {
        framer.push(chunk);
        while let Ok(Some(frame)) = framer.next_frame() {
            if let Frame::Stanza(s) = frame {
                stanzas += 1;
                if view {
                    black_box(StanzaView::of(&s.root));
                }
                black_box(s);
            }
        }
    }
    stanzas
}

fn framing(c: &mut Criterion) {
    let (input, expected) = stream();
    assert_eq!(run(&input, false), expected, "bench input did not frame");
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.sample_size(20);
    group.bench_function("frame", |b| b.iter(|| run(black_box(&input), false)));
    group.bench_function("frame+view", |b| b.iter(|| run(black_box(&input), true)));
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
