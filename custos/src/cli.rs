//! The command tree. Names are fixed by the operator documentation; options may grow.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Debug, Parser)]
#[command(
    name = "custos",
    version,
    about = "Compliance archiving and content-monitoring proxy for XMPP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run what the configuration enables: listeners, archive writer, indexer, web UI.
    /// SIGTERM or Ctrl-C stops accepting, closes sessions with <system-shutdown/> and drains.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Search the archive (query syntax: docs/search-syntax.md). Works while `serve` runs.
    Search {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON object per line: per logical message, with its copies listed.
        #[arg(long)]
        json: bool,
        /// One line per record instead: every copy of a message (sender's, each
        /// recipient's, carbons, replays) as it was observed, with its leg and verdict.
        #[arg(long)]
        copies: bool,
        /// At most this many lines (logical messages, or records with --copies).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// e.g. `from:alice@example.test after:2026-11-01 "project falcon"`
        #[arg(required = true, num_args = 1..)]
        query: Vec<String>,
    },
    /// Check every record, chain link and checkpoint; exit 1 with each problem located.
    Verify {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Rebuild the search index from the record log.
    Reindex {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Policy rules: check and try them before they go live.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Regulator export: Parquet rows, HTML transcripts and a signed manifest with the
    /// proofs that tie every record to the signed archive (docs/export-format.md).
    Export {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A new (or empty) directory; with `--format actiance`, a new file.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// `verifiable` (Parquet, transcripts and proofs, docs/export-format.md) or
        /// `actiance` (Actiance XML for archivers that ingest it, docs/journal.md).
        #[arg(long, value_enum, default_value = "verifiable")]
        format: ExportFormat,
        /// Only messages matching this search query.
        #[arg(long, value_name = "Q")]
        query: Option<String>,
        /// From this time on (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Before this time.
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Find the query's messages by decrypting and testing every record instead
        /// of through the search index (verifiable format; Actiance always does).
        #[arg(long)]
        scan: bool,
    },
    /// Check an export offline: file hashes, the manifest signature and every record's
    /// proof, using only the export directory and the archive's public key.
    VerifyExport {
        dir: PathBuf,
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// Review web UI accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Legal holds: records they cover are never shredded (docs/retention.md).
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Expiry under `[retention]`: shred sealed segments past their retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Data-subject erasure requests (GDPR Art. 17).
    Erasure {
        #[command(subcommand)]
        command: ErasureCommand,
    },
    /// Sealed segments in an S3 bucket under Object Lock (docs/object-storage.md).
    #[command(name = "object-store")]
    ObjectStore {
        #[command(subcommand)]
        command: ObjectStoreCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout,
    /// e.g. `custos completions bash > /etc/bash_completion.d/custos`.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// What `custos export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Verifiable,
    Actiance,
}

#[derive(Debug, Subcommand)]
pub enum ObjectStoreCommand {
    /// Check that the bucket has versioning and Object Lock enabled.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create the bucket with Object Lock enabled (versioning comes with it).
    CreateBucket {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Upload sealed segments, set legal holds, delete shredded segments' key objects:
    /// what `serve` does every `upload_every`. Needs the archive not to be served.
    Sync {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a hold (or with --change replace an active one's criteria). Criteria combine
    /// with AND; at least one is needed. Covers messages written later too.
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        matter: String,
        /// A custodian (repeatable): messages they sent, received or whose session carried.
        #[arg(long = "jid", value_name = "JID")]
        jids: Vec<String>,
        /// A search query (docs/search-syntax.md).
        #[arg(long, value_name = "Q")]
        query: Option<String>,
        /// From this time on (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Before this time.
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Who places it (recorded); default `cli:$USER`.
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// Replace the criteria of the active hold of this matter (without it, an
        /// active matter of that name is an error).
        #[arg(long)]
        change: bool,
    },
    /// Every hold, active and released, with who placed, changed and released it.
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Release a hold: its records expire again under their retention.
    Release {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        matter: String,
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Shred every sealed segment past its retention that no hold touches (the same job
    /// `serve` runs every `[retention] run_every`). Needs the archive not to be served.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print what would be shredded and what holds keep; change nothing. Works
        /// while `serve` runs.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ErasureCommand {
    /// Every record of a data subject, by retention class and hold, with the date each
    /// becomes erasable and why it is kept until then. Recorded as an audit record.
    Report {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "JID")]
        jid: String,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account; the password is read from standard input (one line).
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// admin (manages accounts), officer (reviews), auditor (reads, changes nothing).
        #[arg(long)]
        role: String,
        /// The account's own XMPP address(es): messages to or from them are never
        /// reviewed by this account.
        #[arg(long = "jid", value_name = "JID")]
        jids: Vec<String>,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the master key and the signing key (and its .pub) where the config points;
    /// refuses to overwrite.
    Init {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a rules file; exit 0, or 1 with `FILE:LINE: reason` errors.
    Check { rules: PathBuf },
    /// Evaluate JSON-lines messages (`-` or no INPUT: stdin); one verdict line out each.
    Test {
        rules: PathBuf,
        input: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; on error print `FILE:LINE: key: reason` and exit 1.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => crate::serve::run(&config),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "custos", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => Ok(check_config(&config)),
        Command::Keys {
            command: KeysCommand::Init { config },
        } => crate::archive_cmds::keys_init(&config),
        Command::Search {
            config,
            json,
            copies,
            limit,
            query,
        } => crate::archive_cmds::search(&config, &query.join(" "), limit, json, copies),
        Command::Verify { config } => crate::archive_cmds::verify(&config),
        Command::Reindex { config } => crate::archive_cmds::reindex(&config),
        Command::Export {
            config,
            out,
            format: ExportFormat::Verifiable,
            query,
            since,
            until,
            scan,
        } => crate::export_cmds::export(
            &config,
            &out,
            query.as_deref(),
            since.as_deref(),
            until.as_deref(),
            scan,
        ),
        Command::Export {
            config,
            out,
            format: ExportFormat::Actiance,
            query,
            since,
            until,
            scan: _,
        } => crate::export_cmds::export_actiance(
            &config,
            &out,
            query.as_deref(),
            since.as_deref(),
            until.as_deref(),
        ),
        Command::VerifyExport { dir, public_key } => {
            crate::export_cmds::verify_export(&dir, &public_key)
        }
        Command::User {
            command:
                UserCommand::Add {
                    config,
                    role,
                    jids,
                    name,
                },
        } => crate::user_cmds::add(&config, &role, &jids, &name),
        Command::Hold { command } => match command {
            HoldCommand::Add {
                config,
                matter,
                jids,
                query,
                since,
                until,
                actor,
                change,
            } => crate::retention_cmds::hold_add(
                &config,
                &matter,
                &jids,
                query.as_deref(),
                (since.as_deref(), until.as_deref()),
                actor,
                change,
            ),
            HoldCommand::List { config, json } => crate::retention_cmds::hold_list(&config, json),
            HoldCommand::Release {
                config,
                matter,
                actor,
            } => crate::retention_cmds::hold_release(&config, &matter, actor),
        },
        Command::Retention {
            command: RetentionCommand::Run { config, dry_run },
        } => crate::retention_cmds::run(&config, dry_run),
        Command::Erasure {
            command:
                ErasureCommand::Report {
                    config,
                    jid,
                    json,
                    actor,
                },
        } => crate::retention_cmds::erasure_report(&config, &jid, json, actor),
        Command::ObjectStore { command } => match command {
            ObjectStoreCommand::Check { config } => crate::object_store_cmds::check(&config),
            ObjectStoreCommand::CreateBucket { config } => {
                crate::object_store_cmds::create_bucket(&config)
            }
            ObjectStoreCommand::Sync { config } => crate::object_store_cmds::sync(&config),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Check { rules } => crate::policy_cmds::check(&rules),
            PolicyCommand::Test { rules, input } => {
                crate::policy_cmds::test(&rules, input.as_deref())
            }
        },
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            let listeners = cfg.proxy.as_ref().map_or(0, |p| p.listeners.len());
            println!(
                "{}: ok ({listeners} listener(s){}{}{})",
                path.display(),
                if cfg.archive.is_some() {
                    ", archive"
                } else {
                    ""
                },
                if cfg.policy.is_some() { ", policy" } else { "" },
                if cfg.web.is_some() { ", web" } else { "" },
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
