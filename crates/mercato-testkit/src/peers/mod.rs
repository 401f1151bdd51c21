//! Protocol-level peers for tests: they speak the real protocols (SMTP, HTTP) on loopback ports
//! and record what they receive; tests tell them to fail, slow down, or answer "unregistered".
//! Nothing here mocks our own code.

mod http_sink;
mod smtp;

pub use http_sink::{HttpSink, ReceivedRequest};
pub use smtp::{SmtpMessage, SmtpSink};
