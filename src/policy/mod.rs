//! Every pure decision, with time passed in.

pub mod batch;
pub mod budget;
pub mod cron;
pub mod outcome;
pub mod planner;
pub mod prices;
pub mod quota;
pub mod realtime;
pub mod window;
