//! The lanes: intake, real-time, batch, results writer.

pub mod admission;
pub mod batch;
pub mod intake;
pub mod realtime;
pub mod results;
pub mod schedules;
