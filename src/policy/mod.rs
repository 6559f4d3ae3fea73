//! Every pure decision, with time passed in.

pub mod budget;
pub mod cron;
pub mod planner;
pub mod prices;
pub mod quota;
pub mod window;
