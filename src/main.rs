//! The `pgtenant` command: thin, it parses arguments and hands over to the library.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgtenant::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "Tenant-aware PostgreSQL transaction pooler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file: every error with its YAML path, line and column.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Read a password on standard input and print a SCRAM-SHA-256 verifier for the YAML.
    ScramSecret,
    /// Start a throwaway PostgreSQL with demo tenants and the proxy in front of it.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Where the demo serves /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9930")]
        metrics_listen: String,
    },
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::ScramSecret => scram_secret(),
        Command::Run { config } => run(&config),
        Command::Demo {
            listen,
            metrics_listen,
        } => {
            init_logging(LogFormat::Text);
            runtime().and_then(|rt| rt.block_on(pgtenant::demo::run(&listen, &metrics_listen)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc rather than glibc's malloc: tokio allocates each task and each
/// socket's registration 128-byte aligned, and glibc's aligned allocations
/// leave the unaligned part of a block behind as a small free chunk; jemalloc
/// serves those sizes from size classes that are aligned already (resident
/// memory per idle client and instructions per transaction at 64 clients: see
/// the README's Performance section).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The control thread's runtime (accepting, maintenance, reloads, HTTP);
/// client sessions run on the proxy's worker threads ([`pgtenant::workers`]).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn check(path: &std::path::Path) -> ExitCode {
    match pgtenant::config::load(path) {
        Ok(config) => {
            println!(
                "{}: OK ({} clusters, {} tiers, {} tenants)",
                path.display(),
                config.clusters.len(),
                config.tiers.len(),
                config.tenants.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn scram_secret() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    println!(
        "{}",
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    );
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config =
        pgtenant::config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    init_logging(config.log_format);
    runtime()?.block_on(async {
        let proxy = pgtenant::app::Proxy::bind(config, Some(path.to_owned())).await?;
        proxy.run(pgtenant::app::shutdown_signal()).await
    })
}
