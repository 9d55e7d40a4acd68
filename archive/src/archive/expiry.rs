//! Expiry: the retention job. Reads the chain (holds, earlier shreds, every sealed
//! segment's facts), decides per segment with [`crate::retention::decide`], and
//! shreds what is due through the writer, one signed record per segment.
//!
//! ```text
//! pass 1: every record ─▶ Holds (hold.* records) + shred records + SegmentFacts (no holds)
//! decide without holds ─▶ candidates ─▶ pass 2 over the candidates only ─▶ held_by
//! decide again ─▶ Shred: record {segment, class, retention, newest, holds checked}
//!                         ─▶ key destroyed ─▶ indexer deletes + merges the segment's docs
//! ```
//!
//! A shred interrupted after its record and before the key went is completed by the
//! next run (the record already authorises it); one interrupted before the index caught
//! up is completed by the indexer, which deletes when it indexes the shred record.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{EventRecord, NewRecord};
use crate::retention::{
    self, Decision, ExpiryAuthority, Hold, HoldMatcher, Holds, Keep, PolicyHistory,
    RetentionPolicy, SegmentFacts, EXPIRY_RULE, RETENTION_POLICY,
};
use crate::segment;
use crate::time::Timestamp;

use super::*;

/// One sealed segment and what expiry decided for it.
#[derive(Debug, Clone)]
pub struct SegmentPlan {
    pub facts: SegmentFacts,
    pub bytes: u64,
    pub decision: Decision,
    /// When its retention ends, holds aside (`None`: never, under the policies in
    /// force): what the object store locks it until.
    pub due: Option<Timestamp>,
}

/// A segment shredded before: its record and whether the key is really gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredSeen {
    pub segment: u64,
    pub record_seq: u64,
    pub time: Timestamp,
    pub reason: String,
    pub authority: String,
    pub actor: String,
    /// The key file still exists: the shred was interrupted; the next run completes it
    /// unless a hold placed since covers its records (`held_by`).
    pub key_present: bool,
    pub held_by: BTreeMap<String, u64>,
}

/// Everything the retention job knows before acting.
#[derive(Debug, Clone, Default)]
pub struct ExpiryPlan {
    pub now: Option<Timestamp>,
    pub segments: Vec<SegmentPlan>,
    pub shredded: Vec<ShredSeen>,
    pub holds: Vec<Hold>,
    /// Hold and retention-policy records that could not be read: expiry stops while
    /// there are any.
    pub unreadable_holds: Vec<u64>,
    /// The newest segment file.
    pub newest_segment: Option<u64>,
    /// The last seq read: holds placed after it were not considered.
    pub scanned_through: u64,
    /// Whether the chain's last `retention.policy` record states the policy planned
    /// with (a run records it before shredding if not).
    pub policy_recorded: bool,
}

impl ExpiryPlan {
    /// Segments due and unheld.
    pub fn due(&self) -> impl Iterator<Item = &SegmentPlan> {
        self.segments
            .iter()
            .filter(|s| matches!(s.decision, Decision::Shred { .. }))
    }

    /// Segments kept by holds.
    pub fn held(&self) -> impl Iterator<Item = &SegmentPlan> {
        self.segments
            .iter()
            .filter(|s| matches!(s.decision, Decision::Keep(Keep::Held(_))))
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct ExpiryReport {
    pub plan: ExpiryPlan,
    /// (segment, shred record seq) of each segment shredded now.
    pub shredded: Vec<(u64, u64)>,
    /// Interrupted shreds whose key was destroyed now.
    pub completed: Vec<u64>,
}

/// Why the retention job stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Shred(#[from] ShredError),
    #[error("hold record(s) at seq {0:?} cannot be read; nothing is shredded until they are (a hold that cannot be read might cover anything)")]
    UnreadableHolds(Vec<u64>),
    #[error("the retention job stopped: {0}")]
    Task(String),
    #[error("the archive does not verify, so nothing is shredded (a key, a hold record or the log's tail may have been removed): {0}")]
    Unverified(String),
}

impl ArchiveReader {
    /// Reads the chain and decides, for every sealed segment, whether it may be shredded
    /// at `now` under `policy` and the holds recorded in the chain. Changes nothing.
    pub fn expiry_plan(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<ExpiryPlan, ReadError> {
        let mut holds = Holds::default();
        let mut history = PolicyHistory::default();
        let mut facts: BTreeMap<u64, SegmentFacts> = BTreeMap::new();
        let mut shred_records: BTreeMap<u64, ShredSeen> = BTreeMap::new();
        let mut keyless: BTreeSet<u64> = BTreeSet::new();
        // Only sealed segments can go: the one being written never is (and the writer
        // refuses to shred its active segment anyway).
        let ids =
            crate::log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        let newest_segment = ids.last().copied();
        let sealed: BTreeSet<u64> = ids
            .iter()
            .copied()
            .filter(|&id| {
                self.storage
                    .is_sealed(&segment::segment_name(id))
                    .unwrap_or(false)
            })
            .collect();
        let mut scanned_through = 0;
        self.scan(1, |e| {
            scanned_through = e.seq;
            let Some(rec) = e.record else {
                keyless.insert(e.segment);
                return Ok::<(), ReadError>(());
            };
            holds.observe(&rec);
            history.observe(&rec);
            if let NewRecord::Event(EventRecord::Shred {
                segment,
                reason,
                authority,
                actor,
            }) = &rec.content
            {
                shred_records.entry(*segment).or_insert(ShredSeen {
                    segment: *segment,
                    record_seq: rec.seq.0,
                    time: rec.time,
                    reason: reason.clone(),
                    authority: authority.clone(),
                    actor: actor.clone(),
                    key_present: false,
                    held_by: BTreeMap::new(),
                });
            }
            facts
                .entry(e.segment)
                .or_insert_with(|| SegmentFacts::new(e.segment))
                .observe(&rec, &[]);
            Ok(())
        })?;
        let first_seqs: BTreeMap<u64, u64> =
            facts.iter().map(|(id, f)| (*id, f.first_seq)).collect();
        let candidates: BTreeMap<u64, SegmentFacts> = facts
            .into_iter()
            .filter(|(id, _)| sealed.contains(id) && !shred_records.contains_key(id))
            .collect();
        for s in shred_records.values_mut() {
            s.key_present = !keyless.contains(&s.segment) && self.has_key(s.segment);
        }
        // Holds only matter for segments that would otherwise go — due ones, and
        // interrupted shreds whose key is still there: read those again.
        let mut matchers: Vec<(String, HoldMatcher)> = holds.matchers();
        // With several nodes, a hold placed on any of them covers every node's records.
        let peer_holds = match crate::bucket::registered(&self.dir) {
            Some(remote) => crate::bucket::peer_holds(&self.dir, &remote, &self.master)
                .map_err(ReadError::PeerHolds)?,
            None => Vec::new(),
        };
        matchers.extend(
            peer_holds
                .iter()
                .filter(|h| h.active)
                .map(|h| (h.spec.matter.clone(), h.spec.matcher())),
        );
        // What each segment is kept for: the longest retention in force for its classes
        // at any time since it was written (recorded policies), never less than now.
        let effective = |f: &SegmentFacts| history.effective(policy, f.first_seq, u64::MAX);
        let due: BTreeSet<u64> = candidates
            .iter()
            .filter(|(_, f)| {
                matches!(
                    retention::decide(f, &effective(f), now),
                    Decision::Shred { .. }
                )
            })
            .map(|(id, _)| *id)
            .chain(
                shred_records
                    .values()
                    .filter(|s| s.key_present)
                    .map(|s| s.segment),
            )
            .collect();
        let mut held: BTreeMap<u64, SegmentFacts> = BTreeMap::new();
        if !due.is_empty() && !matchers.is_empty() {
            let from = due
                .iter()
                .filter_map(|id| first_seqs.get(id).copied())
                .min()
                .unwrap_or(1);
            self.scan(from, |e| {
                if !due.contains(&e.segment) {
                    return Ok::<(), ReadError>(());
                }
                if let Some(rec) = e.record {
                    held.entry(e.segment)
                        .or_insert_with(|| SegmentFacts::new(e.segment))
                        .observe(&rec, &matchers);
                }
                Ok(())
            })?;
        }
        for s in shred_records.values_mut().filter(|s| s.key_present) {
            s.held_by = held
                .get(&s.segment)
                .map(|f| f.held_by.clone())
                .unwrap_or_default();
        }
        let segments = candidates
            .into_iter()
            .map(|(id, f)| {
                let f = held.remove(&id).unwrap_or(f);
                let policy = effective(&f);
                SegmentPlan {
                    bytes: self.segment_len(id),
                    decision: retention::decide(&f, &policy, now),
                    due: retention::segment_due(&f, &policy)
                        .ok()
                        .map(|(_, _, due)| due),
                    facts: f,
                }
            })
            .collect();
        Ok(ExpiryPlan {
            now: Some(now),
            segments,
            shredded: shred_records.into_values().collect(),
            holds: holds.all().cloned().chain(peer_holds).collect(),
            unreadable_holds: holds
                .unreadable
                .iter()
                .chain(&history.unreadable)
                .copied()
                .collect(),
            policy_recorded: history.last() == Some(policy),
            newest_segment,
            scanned_through,
        })
    }

    /// Every hold recorded in the chain, with its history.
    pub fn holds(&self) -> Result<Holds, ReadError> {
        let mut holds = Holds::default();
        self.scan(1, |e| {
            if let Some(rec) = e.record {
                holds.observe(&rec);
            }
            Ok::<(), ReadError>(())
        })?;
        Ok(holds)
    }

    fn has_key(&self, segment: u64) -> bool {
        self.dir.join(segment::key_name(segment)).exists()
    }

    fn segment_len(&self, segment: u64) -> u64 {
        std::fs::metadata(self.dir.join(segment::segment_name(segment)))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Archive {
    /// Runs the retention job once: completes interrupted shreds, then shreds every
    /// sealed segment that is past its retention and under no hold, each with a signed
    /// record naming its class, retention, newest record and the holds checked. With
    /// `dry_run` it only plans.
    pub async fn run_expiry(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
        actor: &str,
        dry_run: bool,
    ) -> Result<ExpiryReport, ExpiryError> {
        let this = self.clone();
        let p = policy.clone();
        // Reading the chain is blocking work: off the caller's runtime threads. Before
        // anything is shredded the archive must verify: a hold record whose key was
        // removed, or a tail with hold records cut off, would otherwise just vanish from
        // the holds this run obeys.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("custos-expiry".into())
            .spawn(move || {
                let problems = if dry_run {
                    Vec::new()
                } else {
                    this.verify_now().problems
                };
                let _ = tx.send((problems, this.reader().expiry_plan(&p, now)));
            })
            .map_err(|e| ExpiryError::Task(e.to_string()))?;
        let (problems, plan) = rx.await.map_err(|e| ExpiryError::Task(e.to_string()))?;
        let plan = plan?;
        let mut report = ExpiryReport {
            plan,
            ..ExpiryReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        if !problems.is_empty() {
            let first: Vec<String> = problems.iter().take(3).map(ToString::to_string).collect();
            return Err(ExpiryError::Unverified(format!(
                "{} problem(s), first: {}",
                problems.len(),
                first.join("; ")
            )));
        }
        if !report.plan.unreadable_holds.is_empty() {
            return Err(ExpiryError::UnreadableHolds(
                report.plan.unreadable_holds.clone(),
            ));
        }
        for s in report.plan.shredded.iter().filter(|s| s.key_present) {
            // A hold placed after the shred was recorded still wins: the key stays (the
            // record stands as an intent, which `verify` accepts) until it is released.
            if !s.held_by.is_empty() {
                continue;
            }
            self.complete_shred(s.segment, s.record_seq, report.plan.scanned_through)
                .await?;
            report.completed.push(s.segment);
        }
        // The retention in force goes into the chain before anything is shredded under
        // it: `verify` checks each shred against what was in force since its segment
        // was written.
        if !report.plan.policy_recorded {
            self.append(NewRecord::Event(EventRecord::Audit {
                actor: actor.to_owned(),
                action: RETENTION_POLICY.into(),
                detail: policy.record_detail(),
            }))
            .await
            .map_err(|e| ExpiryError::Task(e.to_string()))?;
        }
        let holds_checked: Vec<String> = report
            .plan
            .holds
            .iter()
            .filter(|h| h.active)
            .map(|h| h.spec.matter.clone())
            .collect();
        let due: Vec<SegmentPlan> = report.plan.due().cloned().collect();
        for s in due {
            let Decision::Shred {
                class,
                span,
                newest,
                due,
            } = &s.decision
            else {
                continue;
            };
            let authority = ExpiryAuthority {
                rule: EXPIRY_RULE.into(),
                class: class.clone(),
                retention: span.to_string(),
                first_seq: s.facts.first_seq,
                last_seq: s.facts.last_seq,
                records: s.facts.records,
                newest: newest.to_string(),
                due: due.to_string(),
                holds_checked: holds_checked.clone(),
            };
            let authority =
                serde_json::to_string(&authority).map_err(|e| ExpiryError::Task(e.to_string()))?;
            let receipt = self
                .shred_expired(
                    s.facts.segment,
                    &authority,
                    actor,
                    report.plan.scanned_through,
                )
                .await?;
            report.shredded.push((s.facts.segment, receipt.seq.0));
        }
        Ok(report)
    }
}

/// One group of a data subject's records: same retention class, same holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasureGroup {
    pub class: String,
    /// Active holds covering these records.
    pub holds: Vec<String>,
    pub records: u64,
    pub messages: u64,
    pub oldest: Timestamp,
    pub newest: Timestamp,
    /// When the last of them may be shredded, holds aside (`None`: never under the
    /// configuration: a class kept forever or no longer configured).
    pub erasable_from: Option<Timestamp>,
    /// Why they are kept until then, in words.
    pub why: String,
}

/// What the archive holds about one data subject and when it can go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    pub jid: String,
    pub generated: Timestamp,
    pub groups: Vec<ErasureGroup>,
    pub records: u64,
    /// Segments already shredded (their records, this subject's or not, are gone).
    pub shredded_segments: u64,
}

impl ArchiveReader {
    /// Every record concerning `jid` (sender, addressee, session account, claimed
    /// sender, session events), grouped by retention class and covering holds, with the
    /// date each group becomes erasable by expiry and why it is kept until then.
    pub fn erasure_report(
        &self,
        jid: &str,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<ErasureReport, ReadError> {
        let subject = crate::query::bare_jid(&crate::query::normalize_jid(jid)).to_string();
        let mut holds = Holds::default();
        let mut history = PolicyHistory::default();
        let mut facts: BTreeMap<u64, SegmentFacts> = BTreeMap::new();
        let mut shredded: BTreeSet<u64> = BTreeSet::new();
        let mut first_subject_seq = None;
        self.scan(1, |e| {
            let Some(rec) = e.record else {
                shredded.insert(e.segment);
                return Ok::<(), ReadError>(());
            };
            holds.observe(&rec);
            history.observe(&rec);
            facts
                .entry(e.segment)
                .or_insert_with(|| SegmentFacts::new(e.segment))
                .observe(&rec, &[]);
            if first_subject_seq.is_none()
                && retention::party_jids(&rec.content).any(|j| j == subject)
            {
                first_subject_seq = Some(rec.seq.0);
            }
            Ok(())
        })?;
        let matchers = holds.matchers();
        let mut groups: BTreeMap<(String, Vec<String>), ErasureGroup> = BTreeMap::new();
        if let Some(from) = first_subject_seq {
            self.scan(from, |e| {
                let Some(rec) = e.record else {
                    return Ok::<(), ReadError>(());
                };
                if !retention::party_jids(&rec.content).any(|j| j == subject) {
                    return Ok(());
                }
                let seg = facts.get(&e.segment);
                let class = match &rec.content {
                    NewRecord::Message(m) => {
                        retention::class_name(&m.capture.retention_class).to_string()
                    }
                    _ => seg
                        .and_then(|f| f.classes.iter().next().cloned())
                        .unwrap_or_else(|| retention::DEFAULT_CLASS.into()),
                };
                let held: Vec<String> = matchers
                    .iter()
                    .filter(|(_, m)| m.covers(&rec))
                    .map(|(n, _)| n.clone())
                    .collect();
                let due = seg.map(|f| {
                    retention::segment_due(f, &history.effective(policy, f.first_seq, u64::MAX))
                });
                let g = groups
                    .entry((class.clone(), held.clone()))
                    .or_insert_with(|| ErasureGroup {
                        class,
                        holds: held,
                        records: 0,
                        messages: 0,
                        oldest: rec.time,
                        newest: rec.time,
                        erasable_from: Some(Timestamp(i64::MIN)),
                        why: String::new(),
                    });
                g.records += 1;
                if matches!(rec.content, NewRecord::Message(_)) {
                    g.messages += 1;
                }
                g.oldest = g.oldest.min(rec.time);
                g.newest = g.newest.max(rec.time);
                g.erasable_from = match (g.erasable_from, due) {
                    (Some(a), Some(Ok((_, _, d)))) => Some(a.max(d)),
                    _ => None,
                };
                Ok(())
            })?;
        }
        let mut out: Vec<ErasureGroup> = groups.into_values().collect();
        for g in &mut out {
            let span = policy.span(&g.class);
            g.why = match (&g.erasable_from, span) {
                _ if !g.holds.is_empty() => format!(
                    "legal hold(s) {} cover them: kept while any is active{}",
                    g.holds.join(", "),
                    g.erasable_from
                        .map(|d| format!("; retention alone would allow erasure from {d}"))
                        .unwrap_or_default()
                ),
                (_, None) => format!(
                    "retention class {:?} is not configured: kept until it is",
                    g.class
                ),
                (None, Some(_)) => format!(
                    "retention class {} (or a class sharing their segments) keeps them forever",
                    g.class
                ),
                (Some(d), Some(s)) if *d <= now => format!(
                    "retention class {} ({s}) has ended: the next expiry run erases them, unless a hold on other records of the same segment keeps it",
                    g.class
                ),
                (Some(_), Some(s)) => format!(
                    "retention class {} requires keeping them {s} after the newest record of their segment",
                    g.class
                ),
            };
        }
        Ok(ErasureReport {
            jid: subject,
            generated: now,
            records: out.iter().map(|g| g.records).sum(),
            groups: out,
            shredded_segments: shredded.len() as u64,
        })
    }
}
