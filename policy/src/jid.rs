//! Who a party is: JID normalisation, the patterns rules and groups name (JID, domain,
//! glob), and an index that answers "which patterns and groups does this JID match"
//! once per stanza, so rule evaluation only tests bits.

use std::collections::HashMap;

use regex::RegexSet;

/// A JID split into its parts as a server reads them: localpart and domain prepared
/// (see [`prepare_local`] and [`prepare_domain`]), so `ａnalyst@bigbank\u{AD}.com`, which
/// the server routes to `analyst@bigbank.com`, matches a rule on that party; the
/// resource keeps its case, as RFC 7622 says, with characters that show nothing taken
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jid {
    /// `local@domain` or `domain`, lowercased.
    pub bare: String,
    /// Where the domain starts in `bare`.
    domain_at: usize,
    pub resource: Option<String>,
}

impl Jid {
    /// Splits a JID as found on the wire. Returns `None` for an empty domain.
    pub(crate) fn parse(s: &str) -> Option<Jid> {
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        // One string for both parts: a stanza's addresses are read for every rule set.
        let mut bare = match local {
            Some("") => return None,
            Some(l) => {
                let mut b = String::with_capacity(l.len() + 1 + domain.len());
                push_local(&mut b, l);
                b.push('@');
                b
            }
            None => String::with_capacity(domain.len()),
        };
        let domain_at = bare.len();
        push_domain(&mut bare, domain);
        if bare.len() == domain_at {
            return None;
        }
        Some(Jid {
            bare,
            domain_at,
            resource: resource.map(|r| prepared(r, stringprep::resourceprep, true)),
        })
    }

    /// The domain, prepared (see [`prepare_domain`]).
    pub(crate) fn domain(&self) -> &str {
        self.bare.get(self.domain_at..).unwrap_or_default()
    }

    pub(crate) fn full(&self) -> String {
        match &self.resource {
            Some(r) => format!("{}/{r}", self.bare),
            None => self.bare.clone(),
        }
    }
}

/// A localpart as a server reads it (RFC 6122 nodeprep: compatibility forms and case
/// folded, characters that show nothing, such as a soft hyphen, taken out). One that
/// cannot be prepared, which a server refuses, is kept lowercased.
pub fn prepare_local(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    push_local(&mut out, local);
    out
}

/// [`prepare_local`], appended to `out`.
fn push_local(out: &mut String, local: &str) {
    push_prepared(out, local, stringprep::nodeprep, false);
}

/// A domain as a server reads it: nameprep, as [`prepare_local`], without the empty root
/// label a trailing dot adds (servers strip it too).
pub fn prepare_domain(domain: &str) -> String {
    let mut out = String::with_capacity(domain.len());
    push_domain(&mut out, domain);
    out
}

/// [`prepare_domain`], appended to `out`.
fn push_domain(out: &mut String, domain: &str) {
    push_prepared(
        out,
        domain.trim_end_matches('.'),
        stringprep::nameprep,
        false,
    );
}

/// `part` through `prep`. ASCII needs case folding at most (a server refuses every
/// ASCII character `prep` prohibits), and a part `prep` refuses is kept, lowercased
/// unless `keep_case`.
fn prepared(
    part: &str,
    prep: fn(&str) -> Result<std::borrow::Cow<'_, str>, stringprep::Error>,
    keep_case: bool,
) -> String {
    let mut out = String::with_capacity(part.len());
    push_prepared(&mut out, part, prep, keep_case);
    out
}

/// [`prepared`], appended to `out`.
fn push_prepared(
    out: &mut String,
    part: &str,
    prep: fn(&str) -> Result<std::borrow::Cow<'_, str>, stringprep::Error>,
    keep_case: bool,
) {
    if part.is_ascii() {
        let start = out.len();
        out.push_str(part);
        if !keep_case {
            if let Some(appended) = out.get_mut(start..) {
                appended.make_ascii_lowercase();
            }
        }
        return;
    }
    match prep(part) {
        Ok(p) => out.push_str(&p),
        Err(_) if keep_case => out.push_str(part),
        Err(_) => out.push_str(&part.to_lowercase()),
    }
}

/// A pattern naming parties, as written in `from`/`to` or a group's member list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PartyPattern {
    /// `alice@example.test`: that account, any resource.
    Bare(String),
    /// `alice@example.test/laptop`: that resource only.
    Full(String),
    /// `example.org` or `domain:example.org`: every JID at exactly that domain.
    Domain(String),
    /// `*@research.example.test`: `*` any run of characters, `?` one; matched against the
    /// bare JID, or the full JID when the glob contains `/`.
    Glob(String),
}

impl PartyPattern {
    /// Parses a member pattern. `Err` carries the reason.
    pub(crate) fn parse(s: &str) -> Result<PartyPattern, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty JID pattern".into());
        }
        if let Some(d) = s.strip_prefix("domain:") {
            let d = prepare_domain(d.trim());
            if d.is_empty() || d.contains(['@', '/', '*', '?']) {
                return Err(format!("`{s}` is not a domain"));
            }
            return Ok(PartyPattern::Domain(d));
        }
        if s.contains(['*', '?']) {
            return Ok(PartyPattern::Glob(prepare_glob(s)));
        }
        let jid = Jid::parse(s).ok_or_else(|| format!("`{s}` is not a JID"))?;
        Ok(match (&jid.resource, s.contains('@')) {
            (Some(_), _) => PartyPattern::Full(jid.full()),
            (None, true) => PartyPattern::Bare(jid.bare),
            (None, false) => PartyPattern::Domain(jid.domain().to_owned()),
        })
    }
}

/// A glob whose literal runs are prepared as the addresses it is matched against are:
/// each run of the localpart with nodeprep, of the domain with nameprep, of the
/// resource with resourceprep (`*@straße.de` is `*@strasse.de`). ASCII is left as
/// written (the match ignores case).
fn prepare_glob(glob: &str) -> String {
    if glob.is_ascii() {
        return glob.to_owned();
    }
    let (bare, resource) = match glob.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (glob, None),
    };
    let (local, domain) = match bare.split_once('@') {
        Some((l, d)) => (Some(l), d),
        None => (None, bare),
    };
    // The runs between wildcards, each prepared, the wildcards kept.
    let runs = |part: &str, prep: &dyn Fn(&str) -> String| {
        let mut out = String::new();
        let mut run = String::new();
        for c in part.chars() {
            if matches!(c, '*' | '?') {
                out.push_str(&prep(&run));
                run.clear();
                out.push(c);
            } else {
                run.push(c);
            }
        }
        out.push_str(&prep(&run));
        out
    };
    let mut out = String::new();
    if let Some(l) = local {
        out.push_str(&runs(l, &prepare_local));
        out.push('@');
    }
    out.push_str(&runs(domain, &|d: &str| {
        prepared(d, stringprep::nameprep, false)
    }));
    if let Some(r) = resource {
        out.push('/');
        out.push_str(&runs(r, &|r: &str| {
            prepared(r, stringprep::resourceprep, true)
        }));
    }
    out
}

/// Glob to an anchored, case-insensitive regex.
fn glob_regex(glob: &str) -> String {
    let mut re = String::from("(?i)^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    re
}

pub(crate) type PatternId = usize;

/// Every distinct party pattern in the file, indexed for one lookup per JID.
#[derive(Debug, Default)]
pub(crate) struct PartyIndex {
    patterns: Vec<PartyPattern>,
    ids: HashMap<PartyPattern, PatternId>,
    bare: HashMap<String, Vec<PatternId>>,
    full: HashMap<String, Vec<PatternId>>,
    domain: HashMap<String, Vec<PatternId>>,
    bare_globs: Vec<PatternId>,
    full_globs: Vec<PatternId>,
    bare_glob_set: Option<RegexSet>,
    full_glob_set: Option<RegexSet>,
}

impl PartyIndex {
    pub(crate) fn intern(&mut self, p: PartyPattern) -> PatternId {
        if let Some(&id) = self.ids.get(&p) {
            return id;
        }
        let id = self.patterns.len();
        self.patterns.push(p.clone());
        self.ids.insert(p, id);
        id
    }

    pub(crate) fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Builds the lookup tables. Globs are compiled into two regex sets (bare, full).
    pub(crate) fn build(&mut self) -> Result<(), String> {
        let mut bare_globs = Vec::new();
        let mut full_globs = Vec::new();
        for (id, p) in self.patterns.iter().enumerate() {
            match p {
                PartyPattern::Bare(b) => self.bare.entry(b.clone()).or_default().push(id),
                PartyPattern::Full(f) => self.full.entry(f.clone()).or_default().push(id),
                PartyPattern::Domain(d) => self.domain.entry(d.clone()).or_default().push(id),
                PartyPattern::Glob(g) if g.contains('/') => full_globs.push((id, glob_regex(g))),
                PartyPattern::Glob(g) => bare_globs.push((id, glob_regex(g))),
            }
        }
        let set = |globs: &[(PatternId, String)]| -> Result<Option<RegexSet>, String> {
            if globs.is_empty() {
                return Ok(None);
            }
            RegexSet::new(globs.iter().map(|(_, r)| r.as_str()))
                .map(Some)
                .map_err(|e| e.to_string())
        };
        self.bare_glob_set = set(&bare_globs)?;
        self.full_glob_set = set(&full_globs)?;
        self.bare_globs = bare_globs.into_iter().map(|(id, _)| id).collect();
        self.full_globs = full_globs.into_iter().map(|(id, _)| id).collect();
        Ok(())
    }

    /// Sets the bit of every pattern `jid` matches. Allocates only when the file names
    /// full JIDs (the full JID is built) or a glob matches.
    pub(crate) fn matches(&self, jid: &Jid, out: &mut Bits) {
        let mut set = |ids: Option<&Vec<PatternId>>| {
            for &id in ids.into_iter().flatten() {
                out.set(id);
            }
        };
        set(self.bare.get(&jid.bare));
        set(self.domain.get(jid.domain()));
        let full = (!self.full.is_empty() || self.full_glob_set.is_some()).then(|| jid.full());
        if let Some(full) = &full {
            set(self.full.get(full));
        }
        // `RegexSet::matches` allocates its answer: asked only of a JID some glob matches.
        let mut globs = |set: &Option<RegexSet>, ids: &[PatternId], text: &str| {
            let Some(rs) = set.as_ref().filter(|rs| rs.is_match(text)) else {
                return;
            };
            for i in rs.matches(text).iter() {
                if let Some(&id) = ids.get(i) {
                    out.set(id);
                }
            }
        };
        globs(&self.bare_glob_set, &self.bare_globs, &jid.bare);
        if let Some(full) = &full {
            globs(&self.full_glob_set, &self.full_globs, full);
        }
    }
}

/// A fixed-size bit set (patterns, groups). Up to 128 bits live inline: every stanza
/// takes two sets for each party, and few files name more patterns or groups than that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bits {
    Inline([u64; 2]),
    Heap(Vec<u64>),
}

impl Default for Bits {
    fn default() -> Self {
        Bits::Inline([0; 2])
    }
}

impl Bits {
    pub(crate) fn new(len: usize) -> Self {
        let words = len.div_ceil(64);
        if words <= 2 {
            Bits::default()
        } else {
            Bits::Heap(vec![0; words])
        }
    }
    fn words(&self) -> &[u64] {
        match self {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }
    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }
    pub(crate) fn set(&mut self, i: usize) {
        if let Some(w) = self.words_mut().get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    pub(crate) fn get(&self, i: usize) -> bool {
        self.words()
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Sets every bit set in `other`.
    pub(crate) fn union(&mut self, other: &Bits) {
        for (w, o) in self.words_mut().iter_mut().zip(other.words()) {
            *w |= o;
        }
    }
    /// Indexes of the set bits, ascending.
    pub(crate) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words()
            .iter()
            .enumerate()
            .filter(|(_, &w)| w != 0)
            .flat_map(|(wi, &w)| {
                (0..64)
                    .filter(move |b| w & (1 << b) != 0)
                    .map(move |b| wi * 64 + b)
            })
    }
}

/// Whether `domain` is one of the internal domains or a subdomain of one
/// (`conference.example.test` is internal when `example.test` is).
pub(crate) fn is_internal_domain(domain: &str, internal: &[String]) -> bool {
    internal.iter().any(|d| {
        domain == d
            || domain
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.ends_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_jids() {
        let j = Jid::parse("Alice@Example.TEST/Laptop").unwrap_or_else(|| panic!("jid"));
        assert_eq!(j.bare, "alice@example.test");
        assert_eq!(j.domain(), "example.test");
        assert_eq!(j.resource.as_deref(), Some("Laptop"));
        assert_eq!(j.full(), "alice@example.test/Laptop");
        let d = Jid::parse("Example.ORG./r").unwrap_or_else(|| panic!("jid"));
        assert_eq!((&*d.bare, d.domain()), ("example.org", "example.org"));
        assert_eq!(d.full(), "example.org/r");
        assert_eq!(Jid::parse("@x"), None);
        assert_eq!(Jid::parse(""), None);
        assert_eq!(Jid::parse("a@"), None);
        assert_eq!(Jid::parse("a@./r"), None);
    }

    #[test]
    fn prepares_each_part_as_a_server_does() {
        let j = Jid::parse("ＡNALYST@Big\u{AD}Bank.COM/Ｐhone\u{200B}")
            .unwrap_or_else(|| panic!("jid"));
        assert_eq!(j.bare, "analyst@bigbank.com");
        assert_eq!(j.domain(), "bigbank.com");
        assert_eq!(j.resource.as_deref(), Some("Phone"));
        // Parts the profiles refuse are kept: lowercased, the resource as written.
        let j = Jid::parse("É\u{0}B@Éx\u{0}.com/É\u{0}").unwrap_or_else(|| panic!("jid"));
        assert_eq!(j.bare, "é\u{0}b@éx\u{0}.com");
        assert_eq!(j.domain(), "éx\u{0}.com");
        assert_eq!(j.resource.as_deref(), Some("É\u{0}"));
    }

    #[test]
    fn bit_sets_past_the_inline_words_keep_every_bit() {
        for len in [1, 64, 128, 129, 1000] {
            let mut a = Bits::new(len);
            let mut b = Bits::new(len);
            let ones: Vec<usize> = (0..len).filter(|i| i % 7 == 3 || *i == len - 1).collect();
            for &i in &ones {
                if i % 2 == 0 {
                    a.set(i);
                } else {
                    b.set(i);
                }
            }
            a.union(&b);
            assert_eq!(a.ones().collect::<Vec<_>>(), ones, "{len} bits");
            assert!(ones.iter().all(|&i| a.get(i)), "{len} bits");
            assert!(!a.get(len), "{len} bits: none past the end");
        }
    }

    #[test]
    fn classifies_patterns() {
        assert_eq!(
            PartyPattern::parse("a@b.c"),
            Ok(PartyPattern::Bare("a@b.c".into()))
        );
        assert_eq!(
            PartyPattern::parse("a@b.c/r"),
            Ok(PartyPattern::Full("a@b.c/r".into()))
        );
        assert_eq!(
            PartyPattern::parse("B.c"),
            Ok(PartyPattern::Domain("b.c".into()))
        );
        assert_eq!(
            PartyPattern::parse("domain:b.c"),
            Ok(PartyPattern::Domain("b.c".into()))
        );
        assert_eq!(
            PartyPattern::parse("*@b.c"),
            Ok(PartyPattern::Glob("*@b.c".into()))
        );
        assert_eq!(
            PartyPattern::parse("*@Straße.de"),
            Ok(PartyPattern::Glob("*@strasse.de".into())),
            "prepared as the address it meets is"
        );
        assert_eq!(
            PartyPattern::parse("ｆ*@b\u{AD}ank.*/Téléphone*"),
            Ok(PartyPattern::Glob("f*@bank.*/Téléphone*".into()))
        );
        assert!(PartyPattern::parse("domain:a@b").is_err());
        assert!(PartyPattern::parse(" ").is_err());
    }

    fn matched(idx: &PartyIndex, jid: &str) -> Vec<usize> {
        let mut bits = Bits::new(idx.len());
        idx.matches(
            &Jid::parse(jid).unwrap_or_else(|| panic!("jid {jid}")),
            &mut bits,
        );
        (0..idx.len()).filter(|&i| bits.get(i)).collect()
    }

    #[test]
    fn index_matches_each_pattern_kind() {
        let mut idx = PartyIndex::default();
        let bare = idx.intern(PartyPattern::Bare("alice@example.test".into()));
        let full = idx.intern(PartyPattern::Full("alice@example.test/laptop".into()));
        let dom = idx.intern(PartyPattern::Domain("example.org".into()));
        let glob = idx.intern(PartyPattern::Glob("*@research.example.test".into()));
        let fglob = idx.intern(PartyPattern::Glob("*/bot-*".into()));
        assert_eq!(
            idx.intern(PartyPattern::Bare("alice@example.test".into())),
            bare
        );
        idx.build().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(matched(&idx, "ALICE@example.test/laptop"), vec![bare, full]);
        assert_eq!(matched(&idx, "alice@example.test/phone"), vec![bare]);
        assert_eq!(matched(&idx, "bob@example.org"), vec![dom]);
        assert_eq!(matched(&idx, "bob@sub.example.org"), Vec::<usize>::new());
        assert_eq!(matched(&idx, "carol@Research.example.test"), vec![glob]);
        assert_eq!(matched(&idx, "x@y.z/bot-1"), vec![fglob]);
    }

    #[test]
    fn internal_domains_include_subdomains_only_at_dots() {
        let internal = vec!["example.test".to_string()];
        assert!(is_internal_domain("example.test", &internal));
        assert!(is_internal_domain("conference.example.test", &internal));
        assert!(!is_internal_domain("badexample.test", &internal));
        assert!(!is_internal_domain("example.org", &internal));
    }
}
