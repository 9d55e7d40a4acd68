//! `custos user add`: review web UI accounts.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use custos_web_ui::Role;

use crate::config;

pub fn add(
    config_path: &Path,
    role: &str,
    jids: &[String],
    name: &str,
) -> anyhow::Result<ExitCode> {
    let cfg = config::load_or_fail(config_path)?;
    let Some(web) = cfg.web else {
        bail!(
            "{}: no [web] section: accounts belong to the review web UI",
            config_path.display()
        );
    };
    let role: Role = role.parse().map_err(|_| {
        anyhow::anyhow!("unknown role {role:?}: expected admin, officer or auditor")
    })?;
    // The password comes from stdin so it never appears in the process list or history.
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']);
    custos_web_ui::add_user(&web.users, name, role, password, jids)?;
    println!("added {name} ({role:?}) to {}", web.users.display());
    Ok(ExitCode::SUCCESS)
}
