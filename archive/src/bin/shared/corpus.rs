//! The search benchmarks' corpus: chat among 1,000 users over a Zipf-distributed
//! vocabulary with planted compliance terms, and the query samples of every kind, all
//! from one deterministic generator so every run (and every benchmark binary) sees the
//! same messages and the same queries.

use std::path::Path;

use custos_archive::*;

/// SplitMix64: deterministic, so every run generates the same corpus.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub const USERS: u64 = 1000;
const VOCABULARY: usize = 30_000;
const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "zo", "ri", "ne", "ta", "gu", "be",
    "fa", "ho", "ji", "xu", "mor", "lin", "vas", "tek",
];
/// Compliance terms, planted in about one message in 200, often in pairs a few words
/// apart (what NEAR queries look for).
pub const PLANTED: [(&str, &str); 5] = [
    ("guarantee", "returns"),
    ("guaranteed", "return"),
    ("kickback", "cash"),
    ("confidential", "delete"),
    ("offline", "call"),
];

pub struct Corpus {
    pub words: Vec<String>,
    /// Cumulative Zipf weights over `words`.
    cdf: Vec<f64>,
}

impl Corpus {
    pub fn new(rng: &mut Rng) -> Corpus {
        let mut words = std::collections::BTreeSet::new();
        while words.len() < VOCABULARY {
            let n = 2 + rng.below(3);
            let w: String = (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
                .collect();
            words.insert(w);
        }
        let mut words: Vec<String> = words.into_iter().collect();
        // Shuffle so that rank does not follow spelling.
        for i in (1..words.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            words.swap(i, j);
        }
        let mut cdf = Vec::with_capacity(words.len());
        let mut sum = 0.0;
        for rank in 1..=words.len() {
            sum += 1.0 / (rank as f64).powf(1.07);
            cdf.push(sum);
        }
        Corpus { words, cdf }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        let i = self
            .cdf
            .partition_point(|&c| c < x)
            .min(self.words.len() - 1);
        &self.words[i]
    }

    pub fn body(&self, rng: &mut Rng) -> String {
        let n = 5 + rng.below(21) as usize;
        let mut w: Vec<&str> = (0..n).map(|_| self.word(rng)).collect();
        if rng.below(200) == 0 {
            let (a, b) = PLANTED[rng.below(PLANTED.len() as u64) as usize];
            let at = rng.below(n as u64) as usize;
            w[at] = a;
            let to = (at + 1 + rng.below(4) as usize).min(n - 1);
            if to != at {
                w[to] = b;
            }
        }
        w.join(" ")
    }
}

pub fn message(from: u64, to: u64, body: String, flagged: bool) -> NewRecord {
    NewRecord::Message(MessageRecord {
        session: SessionId(format!("s{from}")),
        outcome: Outcome {
            action: if flagged { Action::Flag } else { Action::Allow },
            rules: if flagged {
                vec!["watch".into()]
            } else {
                Vec::new()
            },
            ..Outcome::allowed()
        },
        ..MessageRecord::chat(
            format!("user{from}@example.test/desk"),
            format!("user{to}@example.test"),
            body,
        )
    })
}

pub fn du(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One kind of query: its Custos form and its FTS5 form (`None`: FTS5 has no such
/// operator), per sample.
pub struct Kind {
    pub name: &'static str,
    pub queries: Vec<(String, Option<String>)>,
}

pub fn kinds(corpus: &Corpus, rng: &mut Rng, per_kind: usize) -> Vec<Kind> {
    // Mid-frequency words: what an investigator's terms look like.
    let mid = |rng: &mut Rng| corpus.words[100 + rng.below(1900) as usize].clone();
    let mut kinds = vec![
        Kind {
            name: "word",
            queries: (0..per_kind)
                .map(|_| {
                    let w = mid(rng);
                    (w.clone(), Some(w))
                })
                .collect(),
        },
        Kind {
            name: "phrase",
            queries: (0..per_kind)
                .map(|_| {
                    let body = corpus.body(rng);
                    let ws: Vec<&str> = body.split(' ').take(2).collect();
                    let p = format!("\"{}\"", ws.join(" "));
                    (p.clone(), Some(p))
                })
                .collect(),
        },
        Kind {
            name: "prefix",
            queries: (0..per_kind)
                .map(|_| {
                    let w = mid(rng);
                    let stem: String = w.chars().take(5).collect();
                    (format!("{stem}*"), Some(format!("{stem}*")))
                })
                .collect(),
        },
        Kind {
            name: "OR-list (5)",
            queries: (0..per_kind)
                .map(|_| {
                    let ws: Vec<String> = (0..5).map(|_| mid(rng)).collect();
                    let q = ws.join(" OR ");
                    (q.clone(), Some(q))
                })
                .collect(),
        },
        Kind {
            name: "NEAR/5",
            queries: (0..per_kind)
                .map(|i| {
                    let (a, b) = PLANTED[i % PLANTED.len()];
                    let a: String = a.chars().take(6).collect();
                    (
                        format!("{a}* NEAR/5 {b}"),
                        Some(format!("NEAR({a}* {b}, 4)")),
                    )
                })
                .collect(),
        },
        Kind {
            name: "fuzzy (~1)",
            queries: (0..per_kind)
                .map(|_| {
                    let mut w: Vec<char> = mid(rng).chars().collect();
                    let at = rng.below(w.len() as u64) as usize;
                    w[at] = 'q';
                    (format!("{}~", w.into_iter().collect::<String>()), None)
                })
                .collect(),
        },
    ];
    let with_filters: Vec<Kind> = kinds
        .iter()
        .map(|k| Kind {
            name: match k.name {
                "word" => "word + who + when",
                "phrase" => "phrase + who + when",
                "prefix" => "prefix + who + when",
                "OR-list (5)" => "OR-list + who + when",
                "NEAR/5" => "NEAR + who + when",
                _ => "fuzzy + who + when",
            },
            queries: k
                .queries
                .iter()
                .map(|(c, f)| {
                    let u = rng.below(USERS);
                    (
                        format!("({c}) with:user{u}@example.test __WHEN__"),
                        f.as_ref().map(|f| format!("{f}\t{u}")),
                    )
                })
                .collect(),
        })
        .collect();
    kinds.extend(with_filters);
    kinds
}

/// Appends `records` messages drawn from `corpus` with `rng`, as the proxy submits
/// them (512 in flight), handing each (from, to, body) to `row` as it is drawn.
/// Returns the time the archive gave each, in submission order.
pub fn ingest(
    archive: &Archive,
    corpus: &Corpus,
    rng: &mut Rng,
    records: u64,
    mut row: impl FnMut(u64, u64, &str),
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(usize::try_from(records).unwrap_or(0));
    crate::shared::block_on(async {
        let mut inflight = std::collections::VecDeque::new();
        for _ in 0..records {
            let from = rng.below(USERS);
            let to = (from + 1 + rng.below(USERS - 1)) % USERS;
            let body = corpus.body(rng);
            let flagged = rng.below(40) == 0;
            row(from, to, &body);
            inflight.push_back(archive.submit(message(from, to, body, flagged)));
            if inflight.len() >= 512 {
                if let Some(s) = inflight.pop_front() {
                    times.push(s.await?.time.0);
                }
            }
        }
        while let Some(s) = inflight.pop_front() {
            times.push(s.await?.time.0);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(times)
}
