//! `custos policy check` and `custos policy test`.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use custos_policy::Policy;

pub fn check(rules: &Path) -> anyhow::Result<ExitCode> {
    match custos_policy::check(rules) {
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Reads JSON lines from `input` (`-` or none: stdin), writes one verdict line each.
pub fn test(rules: &Path, input: Option<&Path>) -> anyhow::Result<ExitCode> {
    let policy = match Policy::load(rules) {
        Ok(p) => p,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let reader: Box<dyn BufRead> = match input {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )),
    };
    let stats = custos_policy::run_test(&policy, reader, std::io::stdout().lock())?;
    for e in &stats.errors {
        let name = input
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        eprintln!("{name}:{}: {}", e.line, e.reason);
    }
    Ok(if stats.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
