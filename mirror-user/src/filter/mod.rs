pub mod classify;
pub mod rules;
pub mod ruleset;
