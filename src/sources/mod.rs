//! Where messages come from. A source's reader reads raw messages (bytes) and reports
//! where it is; `driver` runs every source the same way: stamping with the processing
//! time, moving the capability with the clock, and the checkpoints with it.

pub mod driver;
pub mod fetch_queue;
pub mod file;
pub mod kafka;
pub mod messages;
pub mod replay;
pub mod router;
