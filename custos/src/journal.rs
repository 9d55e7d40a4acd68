//! `[journal]`: the archive delivered to the firm's existing archiver as RFC 5322 mail,
//! one message per conversation per period (`custos_archive::journal` decides what each
//! holds), by SMTP (STARTTLS, AUTH) or into a directory.
//!
//! ```text
//!  every `every`: periods closed (end + grace passed) since the cursor
//!      ─▶ collect from the cursor's seq ─▶ send each message (Message-ID fixed per
//!         archive, conversation and period) ─▶ audit record `journal.delivered`
//!      ─▶ cursor saved (write, fsync, rename)
//!  a failure: nothing saved, retried with back-off; what was sent before it is sent
//!  again with the same Message-ID (at least once; the archiver deduplicates)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use custos_archive::journal::{self, JournalMessage};
use custos_archive::{Archive, EventRecord, NewRecord, Timestamp};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{JournalSettings, JournalTarget};

/// Audit action of a delivery batch.
pub const JOURNAL_DELIVERED: &str = "journal.delivered";
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// The durable cursor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    /// Hex archive id: a cursor of another archive is refused, not followed.
    archive_id: String,
    next_seq: u64,
    /// Periods before this (ms since the epoch) are delivered.
    through_ms: i64,
    delivered: u64,
    /// Records past `next_seq` already journaled as copies of earlier messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    taken: Vec<u64>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_cursor(path: &Path, archive_id: &str) -> anyhow::Result<Cursor> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let c: Cursor = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a journal cursor", path.display()))?;
            if c.archive_id != archive_id {
                anyhow::bail!(
                    "{}: the cursor of another archive ({}); move it away to journal this one from its start",
                    path.display(),
                    c.archive_id
                );
            }
            Ok(c)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor {
            archive_id: archive_id.to_string(),
            next_seq: 1,
            through_ms: 0,
            delivered: 0,
            taken: Vec::new(),
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_cursor(path: &Path, c: &Cursor) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(c)?;
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The e-mail for one journal message.
fn mail(s: &JournalSettings, m: &JournalMessage) -> anyhow::Result<Message> {
    let mut b = Message::builder()
        .from(s.from.parse().context("journal.from")?)
        .subject(format!("XMPP: {} ({} to {} UTC)", m.title, m.start, m.end))
        .message_id(Some(format!("<{}>", m.message_id)))
        .date(
            std::time::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(m.end.0).unwrap_or_default()),
        );
    for t in &s.to {
        b = b.to(t.parse().context("journal.to")?);
    }
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("X-Custos-Participants"),
        m.participants.join(", "),
    ));
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("X-Custos-Period"),
        format!("{} {}", m.start, m.end),
    ));
    Ok(b.body(m.text())?)
}

enum Sender {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Dir(PathBuf),
}

impl Sender {
    fn new(s: &JournalSettings) -> anyhow::Result<Sender> {
        match &s.target {
            JournalTarget::Dir(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                Ok(Sender::Dir(d.clone()))
            }
            JournalTarget::Smtp {
                host,
                port,
                starttls,
                ca,
                credentials,
                ..
            } => {
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                    .port(*port)
                    .timeout(Some(Duration::from_secs(30)));
                if *starttls {
                    let mut params = TlsParameters::builder(host.clone());
                    if let Some(ca) = ca {
                        let pem = std::fs::read(ca)
                            .with_context(|| format!("reading {}", ca.display()))?;
                        params =
                            params.add_root_certificate(Certificate::from_pem(&pem).with_context(
                                || format!("{}: not a PEM certificate", ca.display()),
                            )?);
                    }
                    b = b.tls(Tls::Required(params.build_rustls()?));
                }
                if let Some((user, file)) = credentials {
                    let password = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    b = b.credentials(Credentials::new(user.clone(), password.trim().to_string()));
                }
                Ok(Sender::Smtp(b.build()))
            }
        }
    }

    async fn send(&self, id: &str, m: Message) -> anyhow::Result<()> {
        match self {
            Sender::Smtp(t) => {
                t.send(m)
                    .await
                    .context("the SMTP server refused or could not be reached")?;
                Ok(())
            }
            Sender::Dir(d) => {
                // The Message-ID is ours: digits, hex, '.', '@' and letters only.
                let name: String = id
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let path = d.join(format!("{name}.eml"));
                let tmp = d.join(format!(".{name}.tmp"));
                let bytes = m.formatted();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    use std::io::Write;
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    Ok(())
                })
                .await??;
                Ok(())
            }
        }
    }
}

/// One delivery run: every closed period since the cursor. Returns the messages sent
/// and the cursor as saved.
async fn run_once(
    archive: &Archive,
    s: &JournalSettings,
    sender: &Sender,
) -> anyhow::Result<(usize, Cursor)> {
    let archive_id = hex(&archive.reader().archive_id());
    let mut cursor = load_cursor(&s.state, &archive_id)?;
    let period_ms = i64::try_from(s.period.as_millis()).unwrap_or(i64::MAX);
    // Appends in flight when a period ends land within the grace; so do the copies
    // recorded just after a message (each run counts them with it).
    let grace = journal::copy_window(period_ms);
    let until = journal::period_start(Timestamp(Timestamp::now().0 - grace), period_ms);
    metrics::gauge!("custos_journal_lag_seconds").set(
        (Timestamp::now().0 - cursor.through_ms.max(until.0 - period_ms)).max(0) as f64 / 1000.0,
    );
    if until.0 <= cursor.through_ms {
        return Ok((0, cursor));
    }
    let reader_archive = archive.clone();
    let from = cursor.next_seq;
    let taken = cursor.taken.clone();
    let batch = tokio::task::spawn_blocking(move || {
        journal::collect(reader_archive.reader(), from, until, period_ms, &taken)
    })
    .await??;
    for m in &batch.messages {
        sender.send(&m.message_id, mail(s, m)?).await?;
        metrics::counter!("custos_journal_messages_total").increment(1);
    }
    let n = batch.messages.len();
    if n > 0 {
        let detail = serde_json::json!({
            "from_seq": from,
            "to_seq": batch.next_seq.saturating_sub(1),
            "through": until.to_string(),
            "messages": n,
            "first_message_id": batch.messages.first().map(|m| m.message_id.clone()),
            "last_message_id": batch.messages.last().map(|m| m.message_id.clone()),
        });
        archive
            .append(NewRecord::Event(EventRecord::Audit {
                actor: "custos journal".into(),
                action: JOURNAL_DELIVERED.into(),
                detail: detail.to_string(),
            }))
            .await
            .context("recording the delivery in the audit trail")?;
    }
    cursor.next_seq = batch.next_seq;
    cursor.taken = batch.taken_ahead;
    cursor.through_ms = until.0;
    cursor.delivered += n as u64;
    save_cursor(&s.state, &cursor)?;
    metrics::gauge!("custos_journal_lag_seconds")
        .set((Timestamp::now().0 - until.0).max(0) as f64 / 1000.0);
    Ok((n, cursor))
}

/// Delivers every `every` until shutdown; after a failure waits twice as long each time
/// (at most 15 min) and says so in the log and in `custos_journal_failures_total`.
/// The dashboard reads `health`.
pub async fn journal_loop(
    archive: Archive,
    s: JournalSettings,
    health: custos_web_ui::JournalHealth,
    shutdown: CancellationToken,
) {
    let mut status = custos_web_ui::JournalStatus {
        target: match &s.target {
            JournalTarget::Smtp { host, port, .. } => format!("smtp {host}:{port}"),
            JournalTarget::Dir(d) => format!("dir {}", d.display()),
        },
        ..Default::default()
    };
    let publish = |status: &custos_web_ui::JournalStatus| {
        if let Ok(mut h) = health.write() {
            *h = Some(status.clone());
        }
    };
    let sender = match Sender::new(&s) {
        Ok(sender) => sender,
        Err(e) => {
            warn!(cause = %format!("{e:#}"), "journal: cannot be set up; nothing is journaled");
            status.failures = 1;
            status.last_error = Some(format!("cannot be set up: {e:#}"));
            publish(&status);
            return;
        }
    };
    let mut wait = s.every.min(Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match run_once(&archive, &s, &sender).await {
            Ok((n, cursor)) => {
                if n > 0 || failures > 0 {
                    info!(messages = n, "journal: delivered");
                }
                failures = 0;
                wait = s.every;
                status.failures = 0;
                status.last_error = None;
                status.next_attempt = None;
                status.last_success = Some(Timestamp::now());
                status.delivered = cursor.delivered;
                status.delivered_through =
                    (cursor.through_ms > 0).then_some(Timestamp(cursor.through_ms));
                publish(&status);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics::counter!("custos_journal_failures_total").increment(1);
                wait = s
                    .every
                    .saturating_mul(2u32.saturating_pow(failures.min(10)))
                    .min(MAX_BACKOFF);
                warn!(cause = %format!("{e:#}"), failures, retry_in_s = wait.as_secs(), "journal: delivery failed; retrying");
                status.failures = failures;
                status.last_error = Some(format!("{e:#}"));
                status.next_attempt =
                    Some(Timestamp(Timestamp::now().0.saturating_add(
                        i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
                    )));
                publish(&status);
            }
        }
    }
}
