//! The cluster commands: `coordinator`, `worker`, `local` (a coordinator and N workers in
//! one process), `admin`, and `train --coordinator` (submit and follow). Every node
//! serves Prometheus text at `/metrics`.

mod admin;
pub mod features;
pub mod flight;
mod labels;
mod metrics_http;
mod prepared;
mod ring;
mod submit;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use relgraph_coordinator::service::{self, CoordinatorConfig};

pub use admin::{AdminCommand, run as run_admin};
pub use submit::SubmitArgs;
pub use submit::run as run_submit;
pub use worker::WorkerConfig;

use crate::train::STOP;

/// Flags shared by `coordinator`: each overrides the config file's key.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// A TOML file with the keys of deploy/coordinator.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A running coordinator to join (repeatable).
    #[arg(long)]
    join: Vec<String>,
    #[arg(long, env = "RELGRAPH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Also serve a Flight router here: one address for clients, forwarding each
    /// ticket to a worker that serves its model.
    #[arg(long)]
    flight_listen: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// A TOML file with the keys of deploy/worker.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A coordinator address (repeatable).
    #[arg(long)]
    coordinator: Vec<String>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, env = "RELGRAPH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Serve the ready models trained on this database directory over Flight.
    #[arg(long)]
    serve_data: Option<PathBuf>,
    /// With --serve-data: log rows appended over Flight in this RocksDB directory.
    #[arg(long)]
    serve_store: Option<PathBuf>,
    /// Keep this worker's partitions of each data-parallel job in a RocksDB store under
    /// this directory.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Train on CUDA device N (run one worker per GPU); default: the CPU.
    #[arg(long)]
    gpu: Option<usize>,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

impl CoordinatorArgs {
    fn resolve(&self) -> Result<CoordinatorConfig> {
        let mut c: CoordinatorConfig = match &self.config {
            Some(p) => read_toml(p)?,
            None => {
                let (Some(id), Some(dir)) = (self.id, &self.data_dir) else {
                    anyhow::bail!("give --config FILE, or at least --id and --data-dir");
                };
                toml::from_str(&format!(
                    "id = {id}\ndata_dir = {:?}",
                    dir.display().to_string()
                ))?
            }
        };
        if let Some(v) = self.id {
            c.id = v;
        }
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if !self.join.is_empty() {
            c.join = self.join.clone();
        }
        if self.token.is_some() {
            c.token = self.token.clone();
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen.clone();
        }
        Ok(c)
    }
}

impl WorkerArgs {
    fn resolve(&self) -> Result<WorkerConfig> {
        let mut c: WorkerConfig = match &self.config {
            Some(p) => read_toml(p)?,
            None => WorkerConfig::default(),
        };
        if !self.coordinator.is_empty() {
            c.coordinators = self.coordinator.clone();
        }
        if self.threads.is_some() {
            c.threads = self.threads;
        }
        if self.token.is_some() {
            c.token = self.token.clone();
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = v.clone();
        }
        if let Some(d) = &self.serve_data {
            c.serve_data = Some(d.to_string_lossy().into_owned());
        }
        if let Some(d) = &self.serve_store {
            c.serve_store = Some(d.to_string_lossy().into_owned());
        }
        if let Some(d) = &self.store {
            c.store = Some(d.to_string_lossy().into_owned());
        }
        if self.gpu.is_some() {
            c.gpu = self.gpu;
        }
        anyhow::ensure!(
            c.serve_store.is_none() || c.serve_data.is_some(),
            "`serve_store` logs rows appended to served data: it needs `serve_data` (--serve-data)"
        );
        anyhow::ensure!(
            !c.coordinators.is_empty(),
            "a worker needs at least one coordinator address (--coordinator or `coordinators`)"
        );
        Ok(c)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Serves this process's metrics as Prometheus text at `http://ADDR/metrics`.
pub async fn serve_metrics(addr: &str) -> Result<SocketAddr> {
    metrics_http::install()?;
    metrics_http::serve(addr).await
}

/// Waits for the first Ctrl-C (or SIGTERM).
pub async fn until_stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if STOP.load(Ordering::Relaxed) {
            return;
        }
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn start_coordinator(config: &CoordinatorConfig) -> Result<service::Coordinator> {
    let c = service::start(config).await?;
    let metrics = match &config.metrics_listen {
        Some(addr) => Some(metrics_http::serve(addr).await?),
        None => None,
    };
    // Tests and scripts read this line for the ports picked.
    println!(
        "coordinator {} listening on {}{}",
        config.id,
        c.addr,
        metrics.map(|m| format!(" metrics {m}")).unwrap_or_default()
    );
    Ok(c)
}

pub fn run_coordinator(args: &CoordinatorArgs) -> Result<()> {
    let config = args.resolve()?;
    metrics_http::install()?;
    runtime()?.block_on(async {
        let c = start_coordinator(&config).await?;
        if let Some(addr) = &args.flight_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("router: cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            let router =
                crate::serve::router::Router::new(vec![c.addr.to_string()], config.token.clone());
            let incoming = service::incoming(listener);
            let mut builder = relgraph_coordinator::tls::server()?;
            tokio::spawn(async move {
                let result = builder
                    .add_service(crate::serve::router::server(router))
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = result {
                    tracing::error!("router stopped: {e}");
                }
            });
            println!("router listening on {local}");
        }
        until_stopped().await;
        c.stop();
        Ok(())
    })
}

pub fn run_worker(args: &WorkerArgs) -> Result<()> {
    let config = args.resolve()?;
    metrics_http::install()?;
    crate::train::set_threads(config.threads);
    runtime()?.block_on(async {
        let metrics: SocketAddr = metrics_http::serve(&config.metrics_listen).await?;
        let w = worker::Worker::start(config).await?;
        println!("worker listening on {} metrics {metrics}", w.addr);
        tokio::select! {
            r = w.run() => r,
            _ = until_stopped() => Ok(()),
        }
    })
}

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Where the coordinator keeps its Raft state (default: a temporary directory).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Workers to run.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: String,
    /// Threads for training (shared by the workers; default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// A coordinator and `workers` workers in one process, talking over loopback gRPC like a
/// real cluster; runs until Ctrl-C.
pub fn run_local(args: &LocalArgs) -> Result<()> {
    metrics_http::install()?;
    crate::train::set_threads(args.threads);
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .state
        .clone()
        .unwrap_or_else(|| tmp.path().join("raft"));
    let config = CoordinatorConfig {
        id: 1,
        listen: args.listen.clone(),
        data_dir,
        join: Vec::new(),
        token: None,
        lease_ms: 3000,
        metrics_listen: Some(args.metrics_listen.clone()),
        tls_cert: None,
        tls_key: None,
        tls_ca: None,
    };
    runtime()?.block_on(async {
        let c = start_coordinator(&config).await?;
        let mut workers = Vec::new();
        for _ in 0..args.workers {
            let w = worker::Worker::start(WorkerConfig {
                coordinators: vec![c.addr.to_string()],
                ..WorkerConfig::default()
            })
            .await?;
            workers.push(tokio::spawn(w.run()));
        }
        println!(
            "local cluster: coordinator {}, {} worker(s); submit with `relgraph train ... --coordinator {}`",
            c.addr, args.workers, c.addr
        );
        until_stopped().await;
        for w in workers {
            w.abort();
        }
        c.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configs_in_deploy_load() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
        for id in 1..=3 {
            let c: CoordinatorConfig = read_toml(&root.join(format!("coordinator-{id}.toml")))
                .expect("coordinator config");
            assert_eq!(c.id, id);
            assert_eq!(c.join.is_empty(), id == 1);
        }
        let w: WorkerConfig = read_toml(&root.join("worker.toml")).expect("worker config");
        assert_eq!(w.coordinators.len(), 3);
        let bad = "id = 1\ndata_dir = \"x\"\nlisten_adress = \"y\"\n";
        let e = toml::from_str::<CoordinatorConfig>(bad).expect_err("unknown key");
        assert!(e.to_string().contains("listen_adress"), "{e}");
    }
}
