pub mod engine;
pub mod session;
pub mod stats;
