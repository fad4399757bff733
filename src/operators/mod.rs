//! The job's timely operators, each a function over a stream.

pub mod backpressure;
pub mod decode;
pub mod held;
pub mod restore;
pub mod user_state;
