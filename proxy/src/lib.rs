#![forbid(unsafe_code)]

pub mod framer;
pub mod stanza;
pub mod xml;
