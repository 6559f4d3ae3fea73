//! The lanes: intake, real-time, batch, results writer.

pub mod admission;
pub mod batch;
pub mod calls;
pub mod intake;
pub mod realtime;
pub mod results;
pub mod schedules;
