#![forbid(unsafe_code)]

use clap::Parser;
use mercato::cli::{AdminCommand, Cli, Command, SearchCommand};
use mercato::startup::{Application, BuildOptions, build_state, connect_database, shutdown_signal};
use mercato_kernel::auth::Role;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    mercato_kernel::telemetry::init_tracing(&settings.log_format, &settings.log_level);
    match run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: mercato_kernel::config::Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            // Installed before the listener answers (see `shutdown_signal`).
            let stop = shutdown_signal();
            let app = Application::build(settings, BuildOptions::default()).await?;
            if args.demo {
                let lines = mercato::demo::load(app.state()).await?;
                println!("Demo data loaded. Demo credentials:");
                for l in lines {
                    println!("{l}");
                }
            }
            if let Some(addr) = app.local_addr() {
                println!(
                    "Mercato is listening on http://{addr}  (API: http://{addr}/api/v1, OpenAPI: http://{addr}/api/v1/openapi.json)"
                );
            }
            app.run_until(stop).await
        }
        Command::Bench(args) => mercato::bench::run(args).await,
        Command::GatewaySim(args) => mercato::gateway::run_simulator(args, &settings).await,
        Command::Search {
            command: SearchCommand::Reindex,
        } => {
            let (state, _bus) = build_state(settings, None).await?;
            let (products, docs) = state.search.reindex_offline().await?;
            println!("search index rebuilt: {products} products read, {docs} listed");
            state.kernel.db.close().await;
            Ok(())
        }
        Command::Migrate => {
            let db = connect_database(&settings).await?;
            let versions = mercato_kernel::db::Db::migration_versions(db.backend());
            println!(
                "database is at migration {} ({})",
                versions.last().map(|v| v.0).unwrap_or(0),
                db.backend().as_str()
            );
            db.close().await;
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    email,
                    password,
                    role,
                    name,
                },
        } => {
            let role = Role::parse(&role)
                .filter(|r| *r != Role::Service)
                .ok_or_else(|| anyhow::anyhow!("--role must be admin, seller or customer"))?;
            let (state, _bus) = build_state(settings, None).await?;
            let user = state
                .identity
                .create_user(&email, &password, name.as_deref(), role)
                .await
                .map_err(|e| match e {
                    mercato_commerce::identity::IdentityError::Invalid(api) => {
                        anyhow::anyhow!("{}", api.detail.unwrap_or_else(|| "invalid input".into()))
                    }
                    other => anyhow::anyhow!("{other}"),
                })?;
            println!(
                "created {} {} ({})",
                user.role.as_str(),
                user.email,
                user.id
            );
            state.kernel.db.close().await;
            Ok(())
        }
    }
}
