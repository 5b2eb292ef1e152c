//! Ring all-reduce between the workers of a data-parallel job, over gRPC: each worker
//! serves `Collective.Push` into a mailbox and pushes segments to the next worker in
//! rank order (reduce-scatter, then all-gather), in buckets of [`BUCKET`] values. Every
//! segment's sum is computed once and then copied, so all workers end bit-identical.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use relgraph_coordinator::auth::Auth;
use relgraph_coordinator::service::connect;
use relgraph_proto::cluster::collective_client::CollectiveClient;
use relgraph_proto::cluster::collective_server::Collective as CollectiveRpc;
use relgraph_proto::cluster::{Chunk, ChunkAck};
use relgraph_worker::model::ModelError;
use relgraph_worker::model::parallel::Collective;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Values per all-reduce bucket (4 MiB of f32).
pub const BUCKET: usize = 1 << 20;
/// How long a worker waits for a peer's segment before giving up on the step.
const PATIENCE: Duration = Duration::from_secs(600);

type Key = (u64, u32, u64, u32);

/// Workers this one's rings or sampling calls could not reach, for its next heartbeat to
/// name (the leader then declares a silent one lost sooner).
#[derive(Debug, Default)]
pub struct Unreachable(Mutex<BTreeSet<u64>>);

impl Unreachable {
    pub fn add(&self, worker: u64) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(worker);
        }
    }

    pub fn take(&self) -> Vec<u64> {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut *s).into_iter().collect())
            .unwrap_or_default()
    }
}

/// Segments received and not yet consumed, by (job, attempt, call, phase).
#[derive(Debug, Default)]
pub struct Mailbox {
    slots: Mutex<HashMap<Key, Vec<u8>>>,
    arrived: Condvar,
}

impl Mailbox {
    fn put(&self, key: Key, data: Vec<u8>) {
        if let Ok(mut m) = self.slots.lock() {
            m.insert(key, data);
            self.arrived.notify_all();
        }
    }

    /// Waits for `key`, checking `stop` every 100 ms.
    fn take(&self, key: Key, stop: &AtomicBool) -> Result<Vec<u8>, ModelError> {
        let started = Instant::now();
        let mut m = self
            .slots
            .lock()
            .map_err(|_| ModelError::Collective("mailbox lock poisoned".into()))?;
        loop {
            if let Some(v) = m.remove(&key) {
                return Ok(v);
            }
            if stop.load(Ordering::Relaxed) {
                return Err(ModelError::Collective("stopped".into()));
            }
            if started.elapsed() > PATIENCE {
                return Err(ModelError::Collective(format!(
                    "no segment from the previous worker in {} s",
                    PATIENCE.as_secs()
                )));
            }
            m = self
                .arrived
                .wait_timeout(m, Duration::from_millis(100))
                .map_err(|_| ModelError::Collective("mailbox lock poisoned".into()))?
                .0;
        }
    }

    /// Drops what is left of a finished attempt.
    fn forget(&self, job: u64, attempt: u32) {
        if let Ok(mut m) = self.slots.lock() {
            m.retain(|k, _| (k.0, k.1) != (job, attempt));
        }
    }
}

#[derive(Debug)]
pub struct CollectiveService(pub Arc<Mailbox>);

#[tonic::async_trait]
impl CollectiveRpc for CollectiveService {
    async fn push(&self, req: Request<Chunk>) -> Result<Response<ChunkAck>, Status> {
        let c = req.into_inner();
        self.0.put((c.job, c.attempt, c.call, c.phase), c.data);
        Ok(Response::new(ChunkAck {}))
    }
}

type Client = CollectiveClient<InterceptedService<Channel, Auth>>;

/// This worker's place in one attempt of a data-parallel job.
pub struct Ring {
    pub job: u64,
    pub attempt: u32,
    pub rank: usize,
    pub size: usize,
    /// The next worker's id and address.
    pub next_worker: u64,
    pub next: String,
    /// Where a failed push to the next worker is noted.
    pub unreachable: Arc<Unreachable>,
    pub token: Option<String>,
    pub mailbox: Arc<Mailbox>,
    pub stop: Arc<AtomicBool>,
    pub runtime: tokio::runtime::Handle,
    calls: AtomicU64,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("job", &self.job)
            .field("attempt", &self.attempt)
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("next", &self.next)
            .finish()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.mailbox.forget(self.job, self.attempt);
    }
}

/// Segment `i` of `n` values split `size` ways.
fn segment(n: usize, size: usize, i: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

impl Ring {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (job, attempt): (u64, u32),
        (rank, size): (usize, usize),
        (next_worker, next): (u64, String),
        token: Option<String>,
        (mailbox, unreachable): (Arc<Mailbox>, Arc<Unreachable>),
        stop: Arc<AtomicBool>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Ring {
            job,
            attempt,
            rank,
            size,
            next_worker,
            next,
            unreachable,
            token,
            mailbox,
            stop,
            runtime,
            calls: AtomicU64::new(0),
            client: Mutex::new(None),
        }
    }

    fn send(&self, call: u64, phase: u32, values: &[f32]) -> Result<(), ModelError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let chunk = Chunk {
            job: self.job,
            attempt: self.attempt,
            call,
            phase,
            data,
        };
        let started = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(ModelError::Collective("stopped".into()));
            }
            let client = self.client.lock().ok().and_then(|c| c.clone());
            let client = match client {
                Some(c) => Some(c),
                None => self.runtime.block_on(connect(&self.next)).map(|ch| {
                    let c =
                        CollectiveClient::with_interceptor(ch, Auth::new(self.token.as_deref()));
                    if let Ok(mut slot) = self.client.lock() {
                        *slot = Some(c.clone());
                    }
                    c
                }),
            };
            match client {
                None => self.unreachable.add(self.next_worker),
                Some(mut c) => match self.runtime.block_on(c.push(chunk.clone())) {
                    Ok(_) => return Ok(()),
                    Err(s) if s.code() == tonic::Code::Unauthenticated => {
                        return Err(ModelError::Collective(s.message().to_string()));
                    }
                    Err(_) => {
                        self.unreachable.add(self.next_worker);
                        if let Ok(mut slot) = self.client.lock() {
                            *slot = None;
                        }
                    }
                },
            }
            if started.elapsed() > PATIENCE {
                return Err(ModelError::Collective(format!(
                    "worker {} unreachable for {} s",
                    self.next,
                    PATIENCE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn recv(&self, call: u64, phase: u32) -> Result<Vec<f32>, ModelError> {
        let bytes = self
            .mailbox
            .take((self.job, self.attempt, call, phase), &self.stop)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn ring(&self, v: &mut [f32]) -> Result<(), ModelError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let (w, r, n) = (self.size, self.rank, v.len());
        let mismatch = |got: usize, want: usize| {
            ModelError::Collective(format!("segment of {got} values, expected {want}"))
        };
        for s in 0..w - 1 {
            self.send(call, s as u32, &v[segment(n, w, (r + w - s) % w)])?;
            let into = segment(n, w, (r + 2 * w - s - 1) % w);
            let got = self.recv(call, s as u32)?;
            if got.len() != into.len() {
                return Err(mismatch(got.len(), into.len()));
            }
            for (o, x) in v[into].iter_mut().zip(got) {
                *o += x;
            }
        }
        for s in 0..w - 1 {
            let phase = (w - 1 + s) as u32;
            self.send(call, phase, &v[segment(n, w, (r + 1 + w - s) % w)])?;
            let into = segment(n, w, (r + w - s) % w);
            let got = self.recv(call, phase)?;
            if got.len() != into.len() {
                return Err(mismatch(got.len(), into.len()));
            }
            v[into].copy_from_slice(&got);
        }
        Ok(())
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&self, values: &mut [f32]) -> Result<(), ModelError> {
        if values.is_empty() {
            return self.ring(values);
        }
        for bucket in values.chunks_mut(BUCKET) {
            self.ring(bucket)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_the_next_worker_does_not_take_names_it_unreachable() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        // A port that was free a moment ago: nothing listens there now.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let (stop, unreachable) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let ring = Ring::new(
            (1, 1),
            (0, 2),
            (7, closed.to_string()),
            None,
            (Arc::default(), Arc::clone(&unreachable)),
            stop.clone(),
            runtime.handle().clone(),
        );
        let pushing = std::thread::spawn(move || ring.send(0, 0, &[1.0]));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut noted = Vec::new();
        while noted.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            noted = unreachable.take();
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(noted, vec![7]);
        assert!(pushing.join().expect("push").is_err());
    }

    #[test]
    fn segments_cover_every_value_once() {
        for n in [0, 1, 5, 7, 1000] {
            for w in 1..5 {
                let mut next = 0;
                for i in 0..w {
                    let s = segment(n, w, i);
                    assert_eq!(s.start, next);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
