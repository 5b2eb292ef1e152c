//! `relgraph serve`: one process serving saved models over Arrow Flight, on the data
//! they were trained on plus whatever clients append. Each model directory is watched:
//! when `relgraph train --out` writes a new model there, it is loaded beside the serving
//! one and swapped in as the next version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use relgraph_common::Database;
use relgraph_worker::store::PartitionStore;
use tokio::net::TcpListener;

use super::auth::Sessions;
use super::flight::{NodeService, server};
use super::{Limits, Serving};
use crate::cluster::flight::SampleService;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The database directory the models were trained on.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// A model to serve, as NAME=DIR (a `relgraph train --out` directory); repeatable.
    #[arg(long = "model", required = true, value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Where appended rows are logged (RocksDB); without it, DoPut is refused.
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Clients must present this token (Handshake) to call anything.
    #[arg(long, env = "RELGRAPH_TOKEN")]
    pub token: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Entities per scoring request.
    #[arg(long, default_value_t = Limits::default().keys)]
    pub max_keys: usize,
    /// Bytes per Flight message.
    #[arg(long, default_value_t = Limits::default().message)]
    pub max_message: usize,
    /// Neighbors per hop a request may ask for.
    #[arg(long, default_value_t = Limits::default().fanout)]
    pub max_fanout: u32,
    /// Serve Prometheus text at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: want NAME=DIR"))?;
    if name.is_empty() || dir.is_empty() {
        return Err(format!("`{s}`: want NAME=DIR"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

impl ServeArgs {
    fn limits(&self) -> Limits {
        Limits {
            keys: self.max_keys,
            message: self.max_message,
            fanout: self.max_fanout,
            ..Limits::default()
        }
    }
}

/// Loads the data (replaying appended rows) and the models.
pub fn setup_serving(args: &ServeArgs) -> Result<Arc<Serving>> {
    let db = Database::load(&args.data, args.schema.as_deref())?;
    let store = args
        .store
        .as_deref()
        .map(PartitionStore::open)
        .transpose()
        .context("cannot open the append store")?;
    let serving = Serving::new(db, store, args.limits())?;
    for (name, dir) in &args.models {
        serving
            .load_model(name, dir)
            .with_context(|| format!("model `{name}` ({})", dir.display()))?;
    }
    Ok(Arc::new(serving))
}

/// Serves `serving` over Flight on `listener` until the runtime stops.
pub fn spawn_flight(
    listener: TcpListener,
    serving: Arc<Serving>,
    token: Option<String>,
) -> Result<()> {
    let limits = serving.limits.clone();
    let node = NodeService {
        sampling: SampleService::default(),
        serving: Some(serving),
        sessions: Arc::new(Sessions::new(token)),
    };
    let incoming = relgraph_coordinator::service::incoming(listener);
    let mut builder = relgraph_coordinator::tls::server()?;
    tokio::spawn(async move {
        let result = builder
            .add_service(server(node, &limits))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!("Flight server stopped: {e}");
        }
    });
    Ok(())
}

fn modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join("model.json"))
        .and_then(|m| m.modified())
        .ok()
}

/// Reloads a model whose directory changed, as its next version. A model caught half
/// written fails its checksum and is tried again on the next look.
pub fn spawn_watch(serving: Arc<Serving>, models: Vec<(String, PathBuf)>, every: Duration) {
    std::thread::spawn(move || {
        let mut seen: Vec<Option<SystemTime>> = models.iter().map(|(_, d)| modified(d)).collect();
        loop {
            std::thread::sleep(every);
            for ((name, dir), seen) in models.iter().zip(&mut seen) {
                let now = modified(dir);
                if now == *seen {
                    continue;
                }
                match serving.load_model(name, dir) {
                    Ok(v) => {
                        *seen = now;
                        tracing::warn!(model = %name, version = v, "serving a new version");
                    }
                    Err(e) => tracing::warn!(model = %name, "not reloaded yet: {e:#}"),
                }
            }
        }
    });
}

pub fn run(args: &ServeArgs) -> Result<()> {
    crate::train::set_threads(args.threads);
    let serving = setup_serving(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        if let Some(m) = &args.metrics_listen {
            let addr = crate::cluster::serve_metrics(m).await?;
            println!("metrics on http://{addr}/metrics");
        }
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr: SocketAddr = listener.local_addr()?;
        spawn_flight(listener, serving.clone(), args.token.clone())?;
        spawn_watch(serving.clone(), args.models.clone(), Duration::from_secs(2));
        for m in serving.models() {
            println!(
                "model `{}` v{}: {} ({} entities)",
                m.name,
                m.version,
                m.query,
                serving.entities(&m)
            );
        }
        println!("serving on {addr}");
        crate::cluster::until_stopped().await;
        Ok(())
    })
}
