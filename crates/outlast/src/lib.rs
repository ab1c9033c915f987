//! The outlast binary's library: the CLI commands and the agent that wires the rooms
//! together. `main.rs` only parses arguments, sets up tracing and calls in here.

pub mod agent;
pub mod backup_cli;
pub mod commands;
pub mod demo;
pub mod init;
pub mod logging;
pub mod rebuild;
