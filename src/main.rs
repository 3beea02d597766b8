//! The `portcullis` command line: run the proxy, `check` a config, or `ca init`; exit codes per SPEC §2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::config::Config;

mod allocator;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An allowlisting egress proxy for payment traffic"
)]
struct Cli {
    /// Config file (default: $PORTCULLIS_CONFIG, else the built-in config).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, print the effective settings, exit 0 (valid) or 2 (invalid).
    Check,
    /// The interception CA (SPEC §9).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make a CA that may sign only for the hosts of `connect = "intercept"` upstreams, and
    /// write intercept-ca.pem and intercept-ca-key.pem (mode 0600) into DIR.
    Init {
        /// Folder for the two files (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = Config::path(cli.config.as_deref());
    if let Some(Command::Ca {
        command: CaCommand::Init { out, force },
    }) = &cli.command
    {
        return ca_init(path.as_deref(), out, *force);
    }
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The config's own (dead parts) and the intercept CA's (hosts it may not sign for).
    let warnings: Vec<String> = portcullis::config::lint::check(&config)
        .iter()
        .map(ToString::to_string)
        .chain(portcullis::intercept::warnings(&config))
        .collect();
    if let Some(Command::Check) = cli.command {
        use std::io::Write;
        // A closed stdout (`check | head`) is not a config error.
        let budget = portcullis::budget::Budget::of(&config);
        let _ = write!(std::io::stdout(), "{config}\n{budget}");
        // Warnings leave the exit status at 0: the config is valid, only partly dead.
        for w in &warnings {
            eprintln!("{}: warning: {w}", config.source);
        }
        return ExitCode::SUCCESS;
    }
    // Declared before the runtime, so dropped after it: the last lines are flushed at exit.
    let _log_flush = init_logging(cli.log_format);
    for w in &warnings {
        tracing::warn!("{}: {w}", config.source);
    }
    // The accept loops and client connections run on the workers; signals, reloads and the
    // admin listener on the main thread's runtime.
    let workers =
        portcullis::workers::count(std::env::var(portcullis::workers::ENV).ok().as_deref());
    let (runtime, workers) = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|r| Ok((r, portcullis::workers::Workers::start(workers)?)))
        .map(|(r, mut w)| {
            let spread = std::env::var(portcullis::workers::steer::SPREAD_ENV).ok();
            if portcullis::workers::steer::always_spread(spread.as_deref()) {
                w.always_spread();
            }
            (r, w)
        }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(portcullis::app::run_until_signal(
        config,
        path,
        workers.placement(),
    ));
    // The connections cut at the end are dropped with their tasks; nothing may hold the exit.
    drop(workers);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(stopped) => ExitCode::from(stopped.exit_code()),
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis ca init`: exit 2 for a config error or a config without intercept upstreams,
/// 1 when the files cannot be written (or exist, without `--force`).
fn ca_init(config: Option<&std::path::Path>, out: &std::path::Path, force: bool) -> ExitCode {
    use portcullis::intercept::init::{init, InitError};
    let config = match Config::load_without_intercept_ca(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match init(&config, out, force) {
        Ok(created) => {
            print!("{created}");
            ExitCode::SUCCESS
        }
        Err(e @ InitError::NoInterceptUpstream(_)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) -> portcullis::log_writer::FlushGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::stderr().is_terminal();
    // Access lines are batched (one write per 100 ms, not per request) unless a person watches.
    let (writer, guard) = portcullis::log_writer::BatchedWriter::new(std::io::stderr(), !tty);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(tty);
    let access = match format {
        LogFormat::Text => portcullis::proxy::access::Format::Text,
        LogFormat::Json => portcullis::proxy::access::Format::Json,
    };
    // Access lines skip tracing-subscriber's generic formatting (measured: ~11 % of CPU).
    portcullis::proxy::access::install(access, writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
