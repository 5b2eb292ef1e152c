//! Where serving computes: one thread per core, each the only worker of its own rayon
//! pool.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::Status;

use super::ServeError;

type Job = Box<dyn FnOnce() + Send>;

/// Where requests are computed: one thread per core, each the only worker of its own
/// rayon pool, so a small request's parallel loops run inline on its thread instead of
/// waking other threads for every kernel call (which costs more than the work).
/// Requests queue for a free thread.
#[derive(Debug)]
struct Executor {
    queue: std::sync::mpsc::SyncSender<Job>,
}

impl Executor {
    fn get() -> &'static Executor {
        static EXECUTOR: std::sync::OnceLock<Executor> = std::sync::OnceLock::new();
        EXECUTOR.get_or_init(|| {
            let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(4096);
            let jobs = Arc::new(Mutex::new(jobs));
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            for i in 0..threads {
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("relgraph-serve-{i}"))
                    .spawn(move || {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(1)
                            .use_current_thread()
                            .build();
                        let Ok(pool) = pool else { return };
                        pool.install(|| {
                            loop {
                                let job = match jobs.lock() {
                                    Ok(rx) => rx.recv(),
                                    Err(_) => return,
                                };
                                match job {
                                    Ok(job) => job(),
                                    Err(_) => return,
                                }
                            }
                        });
                    })
                    .expect("spawn a serving thread");
            }
            Executor { queue }
        })
    }
}

/// Queues `job` for the next free serving thread.
pub(super) fn submit(job: impl FnOnce() + Send + 'static) -> Result<(), Status> {
    Executor::get()
        .queue
        .send(Box::new(job))
        .map_err(|_| Status::unavailable("the serving threads stopped"))
}

/// Runs `f` on a serving thread (scoring is CPU work, never done on tokio's threads).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServeError> + Send + 'static,
) -> Result<T, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let queued = Instant::now();
    submit(move || {
        let started = Instant::now();
        let result = f();
        metrics::histogram!("relgraph_serve_queue_seconds")
            .record((started - queued).as_secs_f64());
        metrics::histogram!("relgraph_serve_compute_seconds")
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("relgraph_serve_errors_total").increment(1);
        }
        let _ = tx.send(result);
    })?;
    rx.await
        .map_err(|_| Status::internal("the request failed on its serving thread"))?
        .map_err(Status::from)
}
