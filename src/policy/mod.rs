//! Every pure decision, with time passed in: nothing here reads a clock, the database or the
//! network, so each is unit-tested on its own.
//!
//! - [`planner`]: which lane an item takes, and the one deadline rule.
//! - [`realtime`] and [`batch`]: what an answer means for its item, in each lane; [`outcome`]
//!   holds the words they share.
//! - [`circuit`]: when an API host cannot be reached, probe it instead of sending everything.
//! - [`budget`]: per-tenant caps; [`prices`]: what a call costs.
//! - [`quota`]: the token buckets the real-time lane is paced by.
//! - [`window`] and [`cron`]: time windows per priority class, schedules of recurring jobs.

pub mod batch;
pub mod budget;
pub mod circuit;
pub mod cron;
pub mod outcome;
pub mod owner;
pub mod planner;
pub mod preflight;
pub mod prices;
pub mod quota;
pub mod realtime;
pub mod routing;
pub mod window;
