//! `relgraph train ... --coordinator ADDR`: submits a training job to a running cluster
//! and follows it to its end. Ctrl-C stops following, not the job.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use relgraph_coordinator::client::AdminClient;
use relgraph_coordinator::state::{is_finished, state_name};
use relgraph_proto::cluster::{JobRequest, JobState, SubmitJob};
use serde_json::{Value, json};

use super::admin::job_json;
use crate::pql::DataArgs;
use crate::train::{ConfigArgs, STOP};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Submit to this cluster (any coordinator; repeatable) instead of training here.
    #[arg(long)]
    pub coordinator: Vec<String>,
    #[arg(long, env = "RELGRAPH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// At most this many workers train it, data-parallel (default: every live worker);
    /// fewer when fewer are live, as after one is lost.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
}

pub fn run(
    query: &str,
    data: &DataArgs,
    config: &ConfigArgs,
    out: &Path,
    submit: &SubmitArgs,
    json: bool,
) -> Result<()> {
    if !data.anchor.is_empty() {
        bail!(
            "--anchor names anchors to predict at; training labels the split anchors the query \
             and --step give"
        );
    }
    // A bad --step fails here, not on the workers.
    data.options()?;
    let schema = data
        .schema
        .as_deref()
        .map(|s| std::fs::canonicalize(s).with_context(|| format!("schema file {}", s.display())))
        .transpose()?;
    if config.threads.is_some() {
        bail!("--threads is a worker setting in a cluster (worker config `threads`)");
    }
    if config.device.is_some() {
        bail!(
            "--device is a worker setting in a cluster (`relgraph worker --gpu N`, one worker per GPU)"
        );
    }
    let toml = toml::to_string(&config.config()?).context("cannot encode the training config")?;
    let dir = data.dir()?;
    let data_dir =
        std::fs::canonicalize(dir).with_context(|| format!("data directory {}", dir.display()))?;
    let out = std::path::absolute(out)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let request = SubmitJob {
        request_id: format!("{}-{nanos}", std::process::id()),
        query: query.to_string(),
        data_dir: data_dir.display().to_string(),
        config_toml: toml,
        output_dir: out.display().to_string(),
        workers: submit.workers,
        schema: schema.map(|s| s.display().to_string()).unwrap_or_default(),
        anchor_step: data.step.clone().unwrap_or_default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = AdminClient::new(submit.coordinator.clone(), submit.token.clone());
        let fail = |s: tonic::Status| anyhow!("{}", s.message());
        // A retried submission carries the same request id, so it cannot run twice.
        let job = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.submit(r).await }
            })
            .await
            .map_err(fail)?;
        let id = job.id;
        if !json {
            eprintln!("submitted job {id}");
        }
        let mut last = String::new();
        let job = loop {
            if STOP.load(Ordering::Relaxed) {
                eprintln!("stopped following; job {id} goes on (relgraph admin jobs)");
                return Ok(());
            }
            let job = client
                .call(|mut c| async move { c.get_job(JobRequest { job: id }).await })
                .await
                .map_err(fail)?;
            let line = format!(
                "job {id}: {} (worker {}, attempt {}, epoch {}, step {})",
                state_name(job.state()),
                job.worker,
                job.attempt,
                job.epoch,
                job.step
            );
            if line != last && !json {
                eprintln!("{line}");
                last = line;
            }
            if is_finished(job.state()) {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        match job.state() {
            JobState::Ready => {
                let models = client
                    .call(|mut c| async move {
                        c.models(relgraph_proto::cluster::ListRequest { current: true })
                            .await
                    })
                    .await
                    .map_err(fail)?;
                let metrics = models
                    .models
                    .iter()
                    .find(|m| m.id == job.model)
                    .and_then(|m| serde_json::from_str::<Value>(&m.metrics_json).ok())
                    .unwrap_or(Value::Null);
                if json {
                    println!("{}", json!({"job": job_json(&job), "report": metrics}));
                } else {
                    println!(
                        "job {id} ready: model {} saved to {}",
                        job.model, job.output_dir
                    );
                    for split in ["val", "test"] {
                        if let Some(m) = metrics["metrics"][split].as_object() {
                            let parts: Vec<String> = m
                                .iter()
                                .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                                .collect();
                            println!("  {split}: {}", parts.join(", "));
                        }
                    }
                }
                Ok(())
            }
            JobState::Cancelled => bail!("job {id} was cancelled"),
            _ => bail!("job {id} failed: {}", job.error),
        }
    })
}
