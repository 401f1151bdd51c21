//! The Mercato application: wiring of the kernel, the commerce core and the background
//! workers into one process. `main.rs` only parses the command line and calls in here.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod demo;
pub mod gateway;
pub mod live;
pub mod notify;
pub mod routes;
pub mod startup;

pub use startup::{Application, BuildOptions};
