//! Errors, grouped by whose fault they are.
//!
//! A rules file is configuration: everything wrong with it is a [`Problem`] located at
//! `FILE:LINE`, and all problems found in one pass are returned together so a security
//! team fixes a file in one round trip. Only an unreadable rules file is a local I/O
//! fault with no line to point at.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One thing wrong with a rules (or lexicon) file, at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in (the rules file, or a lexicon file it names).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, in one line.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Why a rules file could not be turned into a [`crate::Policy`].
#[derive(Debug)]
pub enum RulesError {
    /// Local I/O: the rules file itself could not be read.
    Read { file: PathBuf, source: io::Error },
    /// Configuration: the file was read but is not a valid rules file. Never empty.
    Invalid { problems: Vec<Problem> },
}

impl RulesError {
    /// Every located problem (empty for [`RulesError::Read`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            RulesError::Read { .. } => &[],
            RulesError::Invalid { problems } => problems,
        }
    }

    pub(crate) fn read(file: &Path, source: io::Error) -> Self {
        RulesError::Read {
            file: file.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for RulesError {
    /// One `FILE:LINE: reason` per line, in file order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulesError::Read { file, source } => {
                write!(f, "{}: cannot read rules file: {source}", file.display())
            }
            RulesError::Invalid { problems } => {
                let mut first = true;
                for p in problems {
                    if !first {
                        writeln!(f)?;
                    }
                    first = false;
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RulesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RulesError::Read { source, .. } => Some(source),
            RulesError::Invalid { .. } => None,
        }
    }
}

/// Why `policy test` stopped. A bad *input line* is not an error: it is reported on the
/// output and processing goes on. Only the streams themselves failing stops the run.
#[derive(Debug)]
pub enum TestIoError {
    /// Reading the input stream failed.
    Read(io::Error),
    /// Writing the output stream failed.
    Write(io::Error),
}

impl fmt::Display for TestIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestIoError::Read(e) => write!(f, "reading test input: {e}"),
            TestIoError::Write(e) => write!(f, "writing verdicts: {e}"),
        }
    }
}

impl std::error::Error for TestIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestIoError::Read(e) | TestIoError::Write(e) => Some(e),
        }
    }
}

/// Maps byte offsets in a text to 1-based line numbers.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_maps_offsets() {
        let idx = LineIndex::new("a\nbc\n\nd");
        assert_eq!(idx.line(0), 1);
        assert_eq!(idx.line(1), 1);
        assert_eq!(idx.line(2), 2);
        assert_eq!(idx.line(5), 3);
        assert_eq!(idx.line(6), 4);
        assert_eq!(idx.line(100), 4);
    }

    #[test]
    fn display_is_one_problem_per_line() {
        let e = RulesError::Invalid {
            problems: vec![
                Problem {
                    file: "r.toml".into(),
                    line: 3,
                    reason: "bad".into(),
                },
                Problem {
                    file: "r.toml".into(),
                    line: 9,
                    reason: "worse".into(),
                },
            ],
        };
        assert_eq!(e.to_string(), "r.toml:3: bad\nr.toml:9: worse");
    }
}
