//! The words of the job file and of the results format: priorities, modes, deadlines, item states.
//! No I/O here, and nothing of tokio, rusqlite or reqwest.

pub mod job;
