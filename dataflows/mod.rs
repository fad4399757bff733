//! The job graphs, each wiring source -> exchange -> state -> filter -> actions in one
//! readable function.

pub mod prepared;
pub mod trigger;
