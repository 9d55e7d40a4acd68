//! The command tree. Names are fixed by the operator documentation; options may grow.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Debug, Parser)]
#[command(name = "custos", version, about = "Compliance archiving and content-monitoring proxy for XMPP")]
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
        Command::Config {
            command: ConfigCommand::Check { config },
        } => Ok(check_config(&config)),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            let listeners = cfg.proxy.as_ref().map_or(0, |p| p.listeners.len());
            println!(
                "{}: ok ({listeners} listener(s){}{}{})",
                path.display(),
                if cfg.archive.is_some() { ", archive" } else { "" },
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
