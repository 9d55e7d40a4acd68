//! The public façade: [`Archive`] (the serving process's writer, group commit
//! and indexer threads), [`ArchiveReader`] (read-only, any process), and
//! [`reindex`].
//!
//! One process writes: [`Archive::open`] and [`reindex`] hold an exclusive
//! advisory lock on `<dir>/writer.lock` for as long as they write. Readers and
//! `verify` take no lock. Other processes hand audit events to the writer
//! through the inbox ([`crate::inbox`]).
//!
//! Split by concept into files: `writer` (the serving writer and indexer threads),
//! `reader` (read-only access and search), `tail` (following the log), `upkeep` (keeping
//! the index true to the log), `lock`, `errors`, `search` (results).

mod errors;
mod expiry;
mod lock;
mod reader;
mod recent;
mod search;
mod tail;
mod upkeep;
mod writer;

pub use errors::*;
pub use expiry::*;
pub use lock::*;
pub use reader::*;
pub use search::*;
pub use tail::*;
pub use upkeep::*;
pub use writer::*;
