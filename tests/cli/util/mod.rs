//! Shared test scaffolding, one module per job; everything is re-exported here so a test says
//! `use crate::util::*` (or `util::NAME`) whatever module a helper lives in.

mod nobody;
mod procs;
mod sandbox;
mod server;
mod torture;

pub use nobody::*;
pub use procs::*;
pub use sandbox::*;
pub use server::*;
pub use torture::*;
