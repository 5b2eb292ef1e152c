//! `relgraph`: the one binary. Each subcommand group lives in its own file.

mod bench;
mod cluster;
mod demo;
mod explain;
mod generate;
mod inspect;
mod labels;
mod pql;
mod predict;
mod serve;
mod train;
mod uplift;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "relgraph",
    version,
    about = "Predictions from relational data, asked in PQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate both demo worlds, load them back and show what inference found.
    Demo(demo::DemoArgs),
    /// Write a synthetic database with planted structure (CSV, one file per table).
    Generate {
        #[command(subcommand)]
        kind: generate::Kind,
    },
    /// Show the tables, keys, time columns, column types and links of a database directory.
    Inspect {
        /// Directory with one CSV / CSV.gz / Parquet file (or folder of parts) per table.
        dir: PathBuf,
        /// A schema.toml overriding inferred types, keys and links (default: DIR/schema.toml).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, conflicts_with = "emit_schema")]
        json: bool,
        /// Print the schema as an editable schema.toml instead.
        #[arg(long)]
        emit_schema: bool,
    },
    /// Predictive queries: check what a query means and what its labels look like.
    Pql {
        #[command(subcommand)]
        command: pql::PqlCommand,
    },
    /// Measure the hot paths (sampling) on a database.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Train a model for a query: metrics beside the best simple baseline, saved to --out.
    Train {
        query: String,
        #[command(flatten)]
        data: pql::DataArgs,
        /// The model directory to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        config: train::ConfigArgs,
        #[command(flatten)]
        cluster: cluster::SubmitArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a coordinator (Raft metadata, scheduler, admin API).
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker that trains the jobs a coordinator assigns it.
    Worker(cluster::WorkerArgs),
    /// A coordinator and N workers in one process.
    Local(cluster::LocalArgs),
    /// Inspect and steer a running cluster.
    Admin {
        #[command(subcommand)]
        command: cluster::AdminCommand,
    },
    /// Score a saved model again on the splits it was trained with.
    Evaluate(train::EvaluateArgs),
    /// Predict with a saved model for every entity the query selects at one anchor time.
    Predict {
        query: String,
        /// The model directory (`relgraph train --out`); with --server, the name of a
        /// model the server serves.
        #[arg(long)]
        model: PathBuf,
        /// Fetch the predictions from this serving node (`relgraph serve`) instead,
        /// partition by partition in parallel, into one Parquet file per partition
        /// under --out.
        #[arg(long)]
        server: Option<String>,
        #[arg(long, env = "RELGRAPH_TOKEN")]
        token: Option<String>,
        /// Partitions fetched in parallel with --server.
        #[arg(long, default_value_t = 8)]
        parts: usize,
        /// --anchor TIME: when to predict (default: the data's last timestamp).
        #[command(flatten)]
        data: pql::DataArgs,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "parquet")]
        format: predict::Format,
        #[arg(long)]
        threads: Option<usize>,
        /// Add each entity's explanation: `top_columns` (shares of the columns that
        /// weighed most) and `top_rows` (the linked rows that did).
        #[arg(long)]
        explain: bool,
        /// With --explain: `gradient` or `integrated[:STEPS]`.
        #[arg(long, default_value = "gradient")]
        explain_method: relgraph_worker::model::explain::Method,
    },
    /// Why a saved model predicts what it does for an entity: shares per table and
    /// column, and the linked rows that weighed most.
    Explain(explain::ExplainArgs),
    /// Serve saved models over Arrow Flight: scores, recommendations, appended rows.
    Serve(serve::server::ServeArgs),
    /// Write the training table of a query (entity key, anchor_time, label, split) to Parquet.
    Labels {
        query: String,
        #[command(flatten)]
        data: pql::DataArgs,
        /// The Parquet file to write.
        #[arg(long)]
        out: PathBuf,
        /// How ASSUMING is read: auto, conditional or counterfactual (PQL.md §7).
        #[arg(long, default_value = "auto")]
        assuming: relgraph_worker::model::config::Assuming,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELGRAPH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The first Ctrl-C asks training to stop and save; a second one exits at once.
    let _ = ctrlc::set_handler(|| {
        if train::STOP.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    // TLS for every connection this process makes or serves, when the environment
    // names the files (coordinators and workers may also name them in their configs).
    let tls = relgraph_coordinator::tls::TlsFiles::from_env();
    if let Err(e) = relgraph_coordinator::tls::configure(tls) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Generate { kind } => generate::run(&kind),
        Command::Inspect {
            dir,
            schema,
            json,
            emit_schema,
        } => inspect::run(&dir, schema.as_deref(), json, emit_schema),
        Command::Pql { command } => pql::run(&command),
        Command::Bench { command } => bench::run(&command),
        Command::Labels {
            query,
            data,
            out,
            assuming,
        } => labels::run(&query, &data, &out, assuming),
        Command::Train {
            query,
            data,
            out,
            config,
            cluster,
            json,
        } => {
            if cluster.coordinator.is_empty() {
                train::run_train(&query, &data, &config, &out, json)
            } else {
                cluster::run_submit(&query, &data, &config, &out, &cluster, json)
            }
        }
        Command::Coordinator(args) => cluster::run_coordinator(&args),
        Command::Worker(args) => cluster::run_worker(&args),
        Command::Local(args) => cluster::run_local(&args),
        Command::Serve(args) => serve::server::run(&args),
        Command::Admin { command } => cluster::run_admin(&command),
        Command::Evaluate(args) => train::run_evaluate(&args),
        Command::Predict {
            query,
            model,
            server: Some(server),
            token,
            parts,
            data,
            out,
            explain,
            ..
        } => {
            let remote = predict::remote::Remote {
                server,
                token,
                parts,
                anchor: data.anchor.first().cloned(),
                explain,
            };
            predict::remote::run(&query, &model.to_string_lossy(), &remote, &out)
        }
        Command::Predict {
            query,
            model,
            data,
            out,
            format,
            threads,
            explain,
            explain_method,
            ..
        } => {
            let explain = explain.then_some(predict::ExplainOptions {
                method: explain_method,
                top: 5,
            });
            predict::run(&query, &model, &data, &out, format, threads, explain)
        }
        Command::Explain(args) => explain::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
