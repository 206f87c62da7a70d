//! The `hifi` command: parses arguments and calls the crates that do the work.
#![forbid(unsafe_code)]

/// `println!` for a command's output: a closed stdout (`hifi loss | head -1`) ends the
/// process quietly, as Unix tools do, instead of panicking on the broken pipe.
macro_rules! outln {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

/// Writes one line of output (see [`outln`]).
pub(crate) fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

mod chaos;
mod demo;
mod fingerprint_cmd;
mod lineage_cmd;
mod listeners;
mod loadtest;
mod log_bench;
mod log_cmd;
mod ops;
mod receiver_cmd;
mod report;
mod run;
mod scale_cmd;
mod telemetry;
mod versions_cmd;

use clap::{Parser, Subcommand};

/// hifi — high-fidelity data streams.
#[derive(Debug, Parser)]
#[command(name = "hifi", version, about, propagate_version = true)]
struct Cli {
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object
    /// per line, for log shippers). What is logged: the HIFI_LOG environment variable
    /// (e.g. `info`, `warn,hifi_pipeline=debug`; default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT/SIGTERM, then drain and stop cleanly.
    Run {
        /// The pipeline file (TOML).
        file: std::path::PathBuf,
        /// Longest time to wait for in-flight deliveries when stopping.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain: std::time::Duration,
        /// Run only these nodes (comma-separated, e.g. `sources.api,stages.clean`), so
        /// several processes can share one pipeline (Kafka engine).
        #[arg(long, value_name = "NODES")]
        only: Option<String>,
        /// Listen address of the admin API, instead of `[admin] listen` (for several
        /// processes on one machine).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// This process's name among several ingesting the same source (Kafka engine):
        /// each needs its own, kept across restarts (see docs/deploy-kafka.md).
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
    },
    /// Check a pipeline file without starting anything (exit 0 when valid).
    Validate {
        /// The pipeline file (TOML).
        file: std::path::PathBuf,
        /// Also print the file as it is run: `${...}` resolved, secrets masked.
        #[arg(long)]
        print: bool,
    },
    /// Field-level lineage of a pipeline file: every edge, or what a field comes from
    /// (`--upstream`) or reaches (`--impact`).
    Lineage(lineage_cmd::LineageArgs),
    /// A self-contained pipeline with a generator and a receiver, for a first look.
    Demo {
        /// Events per second from the generator.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Dead letters of a running instance's sink: list, show, re-drive.
    #[command(subcommand)]
    Dlq(ops::DlqCommand),
    /// Fingerprints of a running instance's topics: a node's figures per bucket, or two
    /// nodes compared (`diff`).
    #[command(subcommand)]
    Fingerprint(fingerprint_cmd::FingerprintCommand),
    /// The newest signals that buckets of fingerprinted topics are complete, or were
    /// changed by late events.
    Signals(fingerprint_cmd::SignalsArgs),
    /// Lag per node of a running instance (admin API).
    Lag(ops::Admin),
    /// Loss tables per minute of a running instance (exit 1 if a settled bucket lost events).
    Loss {
        #[command(flatten)]
        admin: ops::Admin,
        /// From (RFC 3339 or epoch ms; default one hour ago).
        #[arg(long)]
        from: Option<String>,
        /// To (RFC 3339 or epoch ms; default now).
        #[arg(long)]
        to: Option<String>,
    },
    /// Where did an event go? By origin (topic/partition/offset) or --id.
    Trace {
        #[command(flatten)]
        admin: ops::Admin,
        /// The event's origin, e.g. events/2/1234.
        origin: Option<String>,
        /// The event's id (searched in the source topics over the last hour).
        #[arg(long)]
        id: Option<String>,
    },
    /// Deliver again what a sink read over a range of event time (through its first
    /// retry tier, with the same event ids).
    Replay {
        #[command(flatten)]
        admin: ops::Admin,
        /// The sink.
        sink: String,
        /// From this event time (RFC 3339 or epoch ms), inclusive.
        #[arg(long)]
        from: String,
        /// To this event time, exclusive (default now).
        #[arg(long)]
        to: Option<String>,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Versions of a running instance's versioned stages: hash, topic, state, diff
    /// against the published one, a candidate's backfill progress and audits.
    /// `hifi versions gc` deletes retired versions' topics.
    #[command(args_conflicts_with_subcommands = true)]
    Versions {
        #[command(subcommand)]
        action: Option<versions_cmd::Action>,
        #[command(flatten)]
        admin: ops::Admin,
        /// Only this stage.
        stage: Option<String>,
    },
    /// Publish a candidate version of a stage: readers switch to it (the nodes stop,
    /// draining, and start again on it).
    Publish {
        #[command(flatten)]
        admin: ops::Admin,
        /// The stage.
        stage: String,
        /// The version (its hash, as `hifi versions` shows it).
        #[arg(value_name = "VERSION")]
        hash: String,
        /// Also deliver again, to every reader, the new version's events from this event
        /// time (RFC 3339 or epoch ms), with their ids and the CloudEvents extension
        /// `hifiversion`, so that destinations can replace what the old version sent.
        #[arg(long)]
        redeliver_from: Option<String>,
    },
    /// Open-loop load test with an exact outcome (acknowledged, delivered, lost, latency).
    Loadtest(Box<loadtest::LoadtestArgs>),
    /// A destination that records every event it receives (for tests and demos).
    Receiver(receiver_cmd::ReceiverArgs),
    /// Run a stage or sink of a Kafka pipeline as replicas on this machine, as many as
    /// its recommended replica count (`/v1/scale`) within --min and --max.
    Scale(scale_cmd::ScaleArgs),
    /// Inspect and exercise the embedded log in a data directory.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        // `hifi run` exports spans when its file asks ([telemetry]); a file that does not
        // load is reported by `run` itself, with logs but without spans.
        let telemetry = match &cli.command {
            Command::Run { file, .. } => hifi_pipeline::config::LoadedConfig::load(file)
                .ok()
                .map(|l| l.config.telemetry),
            _ => None,
        };
        let spans = match telemetry::init(cli.log_format == LogFormat::Json, telemetry.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(std::process::ExitCode::from(1));
            }
        };
        let result = match cli.command {
            Command::Log(cmd) => log_cmd::run(cmd).await,
            Command::Run {
                file,
                drain,
                only,
                admin,
                instance,
            } => run::run(file, drain, only, admin, instance).await,
            Command::Validate { file, print } => Ok(run::validate(&file, print)),
            Command::Lineage(args) => lineage_cmd::run(args),
            Command::Demo { rate, duration } => demo::run(rate, duration).await,
            Command::Receiver(args) => receiver_cmd::run(args).await,
            Command::Scale(args) => scale_cmd::run(args).await,
            Command::Loadtest(args) => loadtest::run(*args).await,
            Command::Lag(admin) => ops::lag(admin).await,
            Command::Fingerprint(cmd) => fingerprint_cmd::run(cmd).await,
            Command::Signals(args) => fingerprint_cmd::signals(args).await,
            Command::Dlq(cmd) => ops::dlq(cmd).await,
            Command::Loss { admin, from, to } => ops::loss(admin, from, to).await,
            Command::Trace { admin, origin, id } => ops::trace(admin, origin, id).await,
            Command::Versions {
                action:
                    Some(versions_cmd::Action::Gc {
                        admin,
                        stage,
                        dry_run,
                        with_dead_letters,
                    }),
                ..
            } => versions_cmd::gc(admin, stage, dry_run, with_dead_letters).await,
            Command::Versions {
                action: None,
                admin,
                stage,
            } => versions_cmd::versions(admin, stage).await,
            Command::Publish {
                admin,
                stage,
                hash,
                redeliver_from,
            } => versions_cmd::publish(admin, stage, hash, redeliver_from).await,
            Command::Replay {
                admin,
                sink,
                from,
                to,
                dry_run,
            } => ops::replay(admin, sink, from, to, dry_run).await,
        };
        if let Some(spans) = spans {
            spans.shutdown().await;
        }
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
