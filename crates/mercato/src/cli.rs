//! The command line (API.md "Command line and configuration").

use clap::{Args, Parser, Subcommand};
use mercato_kernel::config::Settings;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "mercato", version, about = "Mercato commerce backend")]
pub struct Cli {
    /// TOML configuration file (environment variables MERCATO_* override it).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, search index, secrets).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API and the background workers.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Load-test a scenario against the real HTTP API and print latencies and invariants.
    Bench(crate::bench::BenchArgs),
    /// Run the payment gateway simulator as its own process.
    GatewaySim(crate::gateway::GatewaySimArgs),
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Search index maintenance.
    Search {
        #[command(subcommand)]
        command: SearchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SearchCommand {
    /// Rebuild the search index of this data directory from the database (stop the server
    /// using the data directory first: it holds the index).
    Reindex,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    pub addr: Option<String>,
    /// Load demo data and print demo credentials.
    #[arg(long)]
    pub demo: bool,
    /// all | api | worker
    #[arg(long)]
    pub role: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create a user with any role (e.g. the first admin).
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        /// admin | seller | customer
        #[arg(long, default_value = "customer")]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
}

impl Cli {
    /// Settings from file + environment, then the flags that override them.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut s = Settings::load(self.config.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            s.data_dir = d.clone();
        }
        if let Command::Serve(args) = &self.command {
            if let Some(a) = &args.addr {
                s.addr = a.clone();
            }
            if let Some(r) = &args.role {
                s.role = r.clone();
            }
        }
        s.validate()?;
        Ok(s)
    }
}
