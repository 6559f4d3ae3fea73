//! The words of the job file and of the results format: priorities, modes, deadlines, item states,
//! what an answer of the API came to. No files or sockets are opened here, and nothing of tokio, rusqlite or reqwest.

pub mod answer;
pub mod batch;
pub mod catalog;
pub mod job;
pub mod job_file;
pub mod line;
pub mod params_check;
pub mod prompt_cache;
pub mod results;
pub mod state;
pub mod time;
