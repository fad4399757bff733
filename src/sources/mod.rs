//! Where messages come from. Each source emits raw messages (bytes) stamped with the
//! processing time, and keeps its capability moving with the clock.

pub mod file;
pub mod kafka;
pub mod replay;
