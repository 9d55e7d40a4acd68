//! `[archive.object_store]`: connecting (credentials from a file or the environment),
//! and `custos object-store check|create-bucket|sync` (docs/object-storage.md).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use custos_archive::bucket::{Credentials, Endpoint, ObjectStoreConfig, Remote, SyncReport};
use custos_archive::retention::RetentionPolicy;
use custos_archive::{Archive, Timestamp};

use crate::archive_cmds;
use crate::config::{self, ArchiveSettings, ObjectStoreSettings};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key: String,
    secret_key: String,
}

fn credentials(s: &ObjectStoreSettings) -> anyhow::Result<Credentials> {
    let (access_key, secret_key) = match &s.credentials {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("reading the object store credentials {}", path.display())
            })?;
            let c: CredentialsFile = toml::from_str(&text).map_err(|e| {
                // The message names the key and line, never the values.
                anyhow::anyhow!(
                    "{}: expected `access_key = \"…\"` and `secret_key = \"…\"`: {}",
                    path.display(),
                    e.message().trim()
                )
            })?;
            (c.access_key, c.secret_key)
        }
        None => {
            let access = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| {
                anyhow::anyhow!("[archive.object_store] has no `credentials` file and AWS_ACCESS_KEY_ID is not set")
            })?;
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
                anyhow::anyhow!("[archive.object_store] has no `credentials` file and AWS_SECRET_ACCESS_KEY is not set")
            })?;
            (access, secret)
        }
    };
    if access_key.is_empty() || secret_key.is_empty() {
        bail!("object store credentials: the access key and the secret key must not be empty");
    }
    Ok(Credentials {
        access_key,
        secret_key: zeroize::Zeroizing::new(secret_key),
    })
}

/// Connects to the configured bucket (if any) and registers it for the archive
/// directory, so that every reader and writer of this process uses it.
pub fn connect(a: &ArchiveSettings) -> anyhow::Result<Option<Remote>> {
    let Some(s) = &a.object_store else {
        return Ok(None);
    };
    let cfg = ObjectStoreConfig {
        endpoint: Endpoint {
            url: s.endpoint.clone(),
            bucket: s.bucket.clone(),
            region: s.region.clone(),
            path_style: s.path_style,
        },
        credentials: credentials(s)?,
        prefix: s.prefix.clone(),
        node: a.node.clone(),
        lock_mode: s.lock_mode,
        keep_local: s.keep_local,
        cache_bytes: s.cache_bytes,
    };
    let remote =
        Remote::connect(&cfg).map_err(|e| anyhow::anyhow!("[archive.object_store]: {e}"))?;
    // A node reading only from the bucket starts with no local directory.
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("creating the archive directory {}", a.dir.display()))?;
    custos_archive::bucket::register(&a.dir, remote.clone());
    Ok(Some(remote))
}

fn remote_of(config_path: &Path) -> anyhow::Result<(config::Config, ArchiveSettings, Remote)> {
    let cfg = config::load_or_fail(config_path)?;
    let Some(a) = cfg.archive.clone() else {
        bail!("{}: no [archive] section", config_path.display());
    };
    let Some(remote) = connect(&a)? else {
        bail!(
            "{}: no [archive.object_store] section",
            config_path.display()
        );
    };
    Ok((cfg, a, remote))
}

/// `custos object-store check`: the bucket exists, has versioning and Object Lock.
pub fn check(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (_, _, remote) = remote_of(config_path)?;
    match remote.check_bucket() {
        Ok(default) => {
            println!(
                "bucket {}: versioning enabled, Object Lock enabled ({} per object, set by Custos at upload)",
                remote.client.endpoint().bucket,
                remote.lock_mode.as_s3()
            );
            match default {
                Some((mode, days)) => {
                    println!("bucket default retention: {} {days} day(s)", mode.as_s3())
                }
                None => println!("bucket default retention: none (Custos sets each object's)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `custos object-store create-bucket`: creates the bucket with Object Lock enabled.
pub fn create_bucket(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (_, _, remote) = remote_of(config_path)?;
    remote
        .client
        .create_bucket_with_lock()
        .context("creating the bucket")?;
    println!(
        "created bucket {} with Object Lock (and versioning) enabled",
        remote.client.endpoint().bucket
    );
    Ok(ExitCode::SUCCESS)
}

pub fn print_report(r: &SyncReport) {
    for (segment, until) in &r.stored {
        println!("stored segment {segment}, locked until {until}");
    }
    for segment in &r.dropped_local {
        println!("removed the local copy of segment {segment}");
    }
    for segment in &r.holds_set {
        println!("legal hold set on segment {segment}");
    }
    for segment in &r.holds_cleared {
        println!("legal hold cleared on segment {segment}");
    }
    for segment in &r.keys_deleted {
        println!("deleted the key object of shredded segment {segment}");
    }
    for (segment, why) in &r.keys_pending {
        println!("key object of shredded segment {segment} not deleted yet: {why}");
    }
    if let Some(seq) = r.witnessed {
        println!("witnessed the checkpoint at seq {seq} in the bucket");
    }
    match &r.index {
        Some(Ok(u)) => println!(
            "index copy: {} file(s) put ({} bytes), {} old object(s) deleted",
            u.files, u.bytes, u.deleted
        ),
        Some(Err(why)) => println!("index copy not updated: {why}"),
        None => {}
    }
    println!(
        "{} segment(s) stored, {} local cop(ies) removed, {} key object(s) deleted, {} pending",
        r.stored.len(),
        r.dropped_local.len(),
        r.keys_deleted.len(),
        r.keys_pending.len()
    );
}

/// `custos object-store sync`: what `serve` does every `upload_every`, once.
pub fn sync(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (cfg, a, remote) = remote_of(config_path)?;
    let policy = cfg
        .retention
        .map(|r| r.policy)
        .unwrap_or_else(RetentionPolicy::keep_forever);
    let master = archive_cmds::master_key(&a)?;
    let signing = custos_archive::load_signing_key(&a.signing_key)
        .with_context(|| format!("reading the signing key {}", a.signing_key.display()))?;
    let archive = match Archive::open(archive_cmds::archive_config(&a, master, signing)) {
        Ok(x) => x,
        Err(custos_archive::OpenError::Locked { .. }) => bail!(
            "the archive is being served; `serve` syncs it itself every [archive.object_store] upload_every"
        ),
        Err(e) => return Err(e).context("opening the archive"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(archive.sync_objects(&remote, &policy, Timestamp::now()));
    let closed = runtime.block_on(archive.close());
    let report = result?;
    closed.context("closing the archive")?;
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}
