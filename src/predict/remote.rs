//! `relgraph predict --server ADDR`: batch predictions from a serving node, written as
//! one Parquet file per partition of the entities, the partitions fetched in parallel
//! over Flight (`DoGet` tickets with `part`), with a progress line.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, StringArray};
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use futures::StreamExt;
use serde_json::{Value, json};

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct Remote {
    pub server: String,
    pub token: Option<String>,
    pub parts: usize,
    pub anchor: Option<String>,
    /// Ask for each entity's explanation columns.
    pub explain: bool,
}

async fn connect(remote: &Remote) -> Result<FlightClient> {
    let channel = relgraph_coordinator::tls::endpoint(&remote.server)?
        .connect()
        .await
        .with_context(|| format!("cannot reach {}", remote.server))?;
    let mut client = FlightClient::new(channel);
    if let Some(token) = &remote.token {
        let session = client.handshake(token.clone().into_bytes()).await?;
        let session = String::from_utf8(session.to_vec())?;
        client.add_header("authorization", &format!("Bearer {session}"))?;
    }
    Ok(client)
}

/// Entities whose rows `column` holds (rows of one entity are adjacent).
fn entities_in(column: &dyn Array) -> usize {
    let Some(keys) = column.as_any().downcast_ref::<StringArray>() else {
        return column.len();
    };
    (0..keys.len())
        .filter(|&i| i == 0 || keys.value(i) != keys.value(i - 1))
        .count()
}

pub fn run(query: &str, model: &str, remote: &Remote, out: &Path) -> Result<()> {
    if remote.parts == 0 {
        bail!("--parts must be at least 1");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = connect(remote).await?;
        let info = client
            .get_flight_info(FlightDescriptor::new_cmd(json!({"v": 1, "model": model}).to_string()))
            .await
            .map_err(|e| anyhow!("model `{model}` on {}: {e}", remote.server))?;
        let meta: Value = serde_json::from_slice(&info.app_metadata)?;
        let total = meta["entities"].as_u64().unwrap_or(0) as usize;
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for part in 0..remote.parts {
            let mut ticket = json!({
                "v": 1,
                "model": model,
                "query": query,
                "part": [part, remote.parts],
                "explain": remote.explain,
            });
            if let Some(a) = &remote.anchor {
                ticket["anchor"] = json!(a);
            }
            let (remote, done) = (remote.clone(), done.clone());
            let path = out.join(format!("part-{part:05}.parquet"));
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&remote).await?;
                let mut stream = client.do_get(Ticket::new(ticket.to_string())).await?;
                let mut writer = None;
                let mut rows = 0;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    let w = match &mut writer {
                        Some(w) => w,
                        None => {
                            let file = std::fs::File::create(&path)
                                .with_context(|| format!("cannot create {}", path.display()))?;
                            writer.insert(parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?)
                        }
                    };
                    w.write(&batch)?;
                    rows += batch.num_rows();
                    done.fetch_add(entities_in(batch.column(0)), Ordering::Relaxed);
                }
                if let Some(w) = writer {
                    w.close()?;
                }
                Ok::<usize, anyhow::Error>(rows)
            }));
        }
        let progress = {
            let done = done.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprint!("\rscored {n} / {total} entities  {rate:.0} entities/s ");
                }
            })
        };
        let mut rows = 0;
        for t in tasks {
            rows += t.await??;
        }
        progress.abort();
        let n = done.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!();
        println!(
            "scored {n} entities on {} in {seconds:.2} s ({:.0} entities/s) -> {} ({rows} rows in {} Parquet files)",
            remote.server,
            n as f64 / seconds.max(1e-9),
            out.display(),
            remote.parts
        );
        Ok(())
    })
}
