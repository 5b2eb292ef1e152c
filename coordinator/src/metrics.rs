//! The coordinator's Prometheus metrics (rendered by the binary at `/metrics`).

use relgraph_proto::cluster::JobState;

use crate::node::{NodeHandle, NodeStatus};
use crate::state::state_name;

pub fn publish(node: &NodeHandle, s: &NodeStatus) {
    metrics::gauge!("relgraph_raft_term").set(s.term as f64);
    metrics::gauge!("relgraph_raft_commit_index").set(s.commit as f64);
    metrics::gauge!("relgraph_raft_applied_index").set(s.applied as f64);
    metrics::gauge!("relgraph_raft_is_leader").set(if s.is_leader { 1.0 } else { 0.0 });
    let Ok(r) = node.replica.read() else {
        return;
    };
    let states = [
        JobState::Pending,
        JobState::Ingest,
        JobState::Label,
        JobState::Train,
        JobState::Ready,
        JobState::Failed,
        JobState::Cancelled,
    ];
    for st in states {
        let n = r.state.jobs.values().filter(|j| j.state() == st).count();
        metrics::gauge!("relgraph_jobs", "state" => state_name(st)).set(n as f64);
    }
    let alive = r.state.workers.values().filter(|w| w.alive).count();
    metrics::gauge!("relgraph_workers_alive").set(alive as f64);
}
