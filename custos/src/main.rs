//! `custos`: the command-line entry point. Parses arguments, loads configuration, starts
//! and stops the parts; every piece of business logic lives in the library crates.

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a crash on user input.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod archive_cmds;
mod cli;
mod config;
mod export_cmds;
mod journal;
mod nodes;
mod object_store_cmds;
mod policy_cmds;
mod retention_cmds;
mod serve;
mod user_cmds;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("custos: {err:#}");
            ExitCode::FAILURE
        }
    }
}
