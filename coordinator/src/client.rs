//! The admin API as a client sees it: any coordinator address will do; calls that reach a
//! follower follow its redirect to the leader, and unreachable coordinators are skipped,
//! for up to [`PATIENCE`].

use std::future::Future;
use std::time::{Duration, Instant};

use relgraph_proto::cluster::admin_client;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::auth::Auth;
use crate::service::{LEADER_KEY, connect};

/// How long a call keeps trying (elections take a few seconds).
pub const PATIENCE: Duration = Duration::from_secs(20);

pub type Client = admin_client::AdminClient<InterceptedService<Channel, Auth>>;

#[derive(Debug)]
pub struct AdminClient {
    addrs: Vec<String>,
    token: Option<String>,
    next: usize,
    current: Option<(String, Client)>,
}

impl AdminClient {
    pub fn new(addrs: Vec<String>, token: Option<String>) -> Self {
        AdminClient {
            addrs,
            token,
            next: 0,
            current: None,
        }
    }

    /// The coordinator the last call went to.
    pub fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|(a, _)| a.as_str())
    }

    async fn client(&mut self, addr: &str) -> Option<Client> {
        if let Some((a, c)) = &self.current
            && a == addr
        {
            return Some(c.clone());
        }
        let ch = connect(addr).await?;
        let c = admin_client::AdminClient::with_interceptor(ch, Auth::new(self.token.as_deref()));
        self.current = Some((addr.to_string(), c.clone()));
        Some(c)
    }

    /// Runs `f` against the leader (or any coordinator, for calls any of them answers),
    /// following redirects and retrying through elections.
    pub async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(Status::invalid_argument("no coordinator address given"));
        }
        let started = Instant::now();
        let mut hint: Option<String> = self.current.as_ref().map(|(a, _)| a.clone());
        let mut last = Status::unavailable("no coordinator answered");
        while started.elapsed() < PATIENCE {
            let addr = hint.take().unwrap_or_else(|| {
                self.next = (self.next + 1) % self.addrs.len();
                self.addrs[self.next].clone()
            });
            let Some(client) = self.client(&addr).await else {
                last = Status::unavailable(format!("coordinator {addr} is unreachable"));
                self.current = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match f(client).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    let leader = s
                        .metadata()
                        .get(LEADER_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match (s.code(), leader) {
                        (Code::FailedPrecondition, Some(l)) if l != addr => hint = Some(l),
                        (Code::FailedPrecondition | Code::Unavailable | Code::Unknown, _) => {
                            self.current = None;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        _ => return Err(s),
                    }
                    last = s;
                }
            }
        }
        Err(last)
    }
}
