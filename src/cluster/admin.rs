//! `relgraph admin status|tables|jobs|models|cancel`: the operator's view of a cluster,
//! as aligned tables or (`--json`) one JSON document.

use anyhow::{Result, anyhow};
use relgraph_coordinator::client::AdminClient;
use relgraph_coordinator::state::state_name;
use relgraph_proto::cluster::{
    Job, JobRequest, ListRequest, Model, StatusRequest, TableInfo, Worker,
};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Any coordinator's address (repeatable); calls follow the leader.
    #[arg(long, required = true)]
    pub coordinator: Vec<String>,
    #[arg(long, env = "RELGRAPH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Raft state of the coordinator asked, coordinators, workers, jobs by state.
    Status {
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Tables registered by ingest.
    Tables {
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Every job with its state, worker, attempt, epoch, step and checkpoint.
    Jobs {
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Trained models.
    Models {
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Cancel a job.
    Cancel {
        job: u64,
        #[command(flatten)]
        args: AdminArgs,
    },
}

pub fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id, "state": state_name(j.state()), "query": j.query, "data_dir": j.data_dir,
        "output_dir": j.output_dir, "worker": j.worker, "workers": j.workers, "attempt": j.attempt, "epoch": j.epoch,
        "step": j.step, "checkpoint": j.checkpoint, "checkpoint_step": j.checkpoint_step,
        "error": j.error, "model": j.model, "submitted_ms": j.submitted_ms, "updated_ms": j.updated_ms,
        "schema": j.schema, "anchor_step": j.anchor_step,
    })
}

fn worker_json(w: &Worker) -> Value {
    json!({"id": w.id, "addr": w.addr, "capacity": w.capacity, "alive": w.alive,
           "registered_ms": w.registered_ms, "lost_ms": w.lost_ms})
}

fn model_json(m: &Model) -> Value {
    json!({"id": m.id, "job": m.job, "query": m.query, "path": m.path,
           "metrics": serde_json::from_str::<Value>(&m.metrics_json).unwrap_or(Value::Null),
           "created_ms": m.created_ms})
}

fn table_json(t: &TableInfo) -> Value {
    json!({"name": t.name, "rows": t.rows, "columns": t.columns, "primary_key": t.primary_key,
           "time_column": t.time_column, "foreign_keys": t.foreign_keys, "job": t.job})
}

/// Left-aligned columns separated by two spaces.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

pub fn run(command: &AdminCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(command))
}

async fn run_async(command: &AdminCommand) -> Result<()> {
    let args = match command {
        AdminCommand::Status { args }
        | AdminCommand::Tables { args }
        | AdminCommand::Jobs { args }
        | AdminCommand::Models { args }
        | AdminCommand::Cancel { args, .. } => args,
    };
    let mut client = AdminClient::new(args.coordinator.clone(), args.token.clone());
    let fail = |s: tonic::Status| anyhow!("{}", s.message());
    let list = ListRequest { current: true };
    match command {
        AdminCommand::Status { .. } => {
            let s = client
                .call(|mut c| async move { c.status(StatusRequest {}).await })
                .await
                .map_err(fail)?;
            if args.json {
                let out = json!({
                    "id": s.id, "leader": s.leader, "leader_addr": s.leader_addr, "term": s.term,
                    "commit": s.commit, "applied": s.applied, "voters": s.voters,
                    "coordinators": s.coordinators, "jobs_by_state": s.jobs_by_state,
                    "workers": s.workers.iter().map(worker_json).collect::<Vec<_>>(),
                });
                println!("{out}");
                return Ok(());
            }
            println!(
                "coordinator {} ({}): leader {} at {}, term {}, commit {}, applied {}",
                s.id,
                client.current().unwrap_or("?"),
                s.leader,
                if s.leader_addr.is_empty() {
                    "?"
                } else {
                    &s.leader_addr
                },
                s.term,
                s.commit,
                s.applied
            );
            let voters: Vec<String> = s
                .coordinators
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect();
            println!("coordinators: {}", voters.join(", "));
            let jobs: Vec<String> = s
                .jobs_by_state
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "jobs: {}",
                if jobs.is_empty() {
                    "none".into()
                } else {
                    jobs.join(", ")
                }
            );
            print_table(
                &["WORKER", "ADDR", "THREADS", "ALIVE"],
                s.workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.to_string(),
                            w.addr.clone(),
                            w.capacity.to_string(),
                            w.alive.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Tables { .. } => {
            let r = client
                .call(|mut c| async move { c.tables(list).await })
                .await
                .map_err(fail)?;
            if args.json {
                println!(
                    "{}",
                    Value::from(r.tables.iter().map(table_json).collect::<Vec<_>>())
                );
                return Ok(());
            }
            print_table(
                &["TABLE", "ROWS", "COLUMNS", "KEY", "TIME", "FOREIGN KEYS"],
                r.tables
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.rows.to_string(),
                            t.columns.to_string(),
                            t.primary_key.clone(),
                            t.time_column.clone(),
                            t.foreign_keys.join(", "),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Jobs { .. } => {
            let r = client
                .call(|mut c| async move { c.jobs(list).await })
                .await
                .map_err(fail)?;
            if args.json {
                println!(
                    "{}",
                    Value::from(r.jobs.iter().map(job_json).collect::<Vec<_>>())
                );
                return Ok(());
            }
            print_table(
                &[
                    "JOB",
                    "STATE",
                    "WORKER",
                    "ATTEMPT",
                    "EPOCH",
                    "STEP",
                    "CHECKPOINT@STEP",
                    "QUERY",
                ],
                r.jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            state_name(j.state()).to_string(),
                            j.worker.to_string(),
                            j.attempt.to_string(),
                            j.epoch.to_string(),
                            j.step.to_string(),
                            if j.checkpoint.is_empty() {
                                "-".into()
                            } else {
                                j.checkpoint_step.to_string()
                            },
                            short(&j.query, 60),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Models { .. } => {
            let r = client
                .call(|mut c| async move { c.models(list).await })
                .await
                .map_err(fail)?;
            if args.json {
                println!(
                    "{}",
                    Value::from(r.models.iter().map(model_json).collect::<Vec<_>>())
                );
                return Ok(());
            }
            print_table(
                &["MODEL", "JOB", "PATH", "QUERY"],
                r.models
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.job.to_string(),
                            m.path.clone(),
                            short(&m.query, 60),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Cancel { job, .. } => {
            let job = *job;
            let j = client
                .call(|mut c| async move { c.cancel(JobRequest { job }).await })
                .await
                .map_err(fail)?;
            if args.json {
                println!("{}", job_json(&j));
            } else {
                println!("job {} {}", j.id, state_name(j.state()));
            }
        }
    }
    Ok(())
}
