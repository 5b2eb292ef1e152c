//! The replicated state machine: every coordinator applies the same committed commands in
//! the same order to its [`ClusterState`]. `apply` is a pure function of the state and
//! the command (times come inside the command), so replicas cannot diverge; the network
//! harness in the tests checks it.

use relgraph_proto::cluster::{ClusterState, Job, JobState, Model, TableInfo, Worker, command::Op};

pub use relgraph_proto::cluster::Command;

/// What a command did, handed back to whoever proposed it.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    Worker(Worker),
    Job(Box<Job>),
    Done,
}

/// Why a command changed nothing (the state is as before).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("job {0} does not exist")]
    NoJob(u64),
    #[error("worker {0} is not registered")]
    NoWorker(u64),
    #[error("job {job} is {state}; it cannot change any more")]
    Finished { job: u64, state: &'static str },
    #[error(
        "job {job}: the report is from attempt {attempt} on worker {worker}, but the job now \
         runs as attempt {current} on worker {current_worker}"
    )]
    Stale {
        job: u64,
        worker: u64,
        attempt: u32,
        current: u32,
        current_worker: u64,
    },
    #[error("worker {0} is not alive")]
    DeadWorker(u64),
    #[error("the command is empty")]
    Empty,
}

/// The name operators see for a job state.
pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Unspecified => "unspecified",
        JobState::Pending => "pending",
        JobState::Ingest => "ingest",
        JobState::Label => "label",
        JobState::Train => "train",
        JobState::Ready => "ready",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

pub fn is_finished(s: JobState) -> bool {
    matches!(s, JobState::Ready | JobState::Failed | JobState::Cancelled)
}

fn job_mut(state: &mut ClusterState, id: u64) -> Result<&mut Job, Rejected> {
    let job = state.jobs.get_mut(&id).ok_or(Rejected::NoJob(id))?;
    if is_finished(job.state()) {
        return Err(Rejected::Finished {
            job: id,
            state: state_name(job.state()),
        });
    }
    Ok(job)
}

pub fn apply(state: &mut ClusterState, cmd: &Command) -> Result<Applied, Rejected> {
    let now = cmd.now_ms;
    match cmd.op.as_ref().ok_or(Rejected::Empty)? {
        Op::Noop(_) => Ok(Applied::Done),
        Op::RegisterWorker(r) => {
            state.next_worker += 1;
            let w = Worker {
                id: state.next_worker,
                addr: r.addr.clone(),
                capacity: r.capacity,
                alive: true,
                registered_ms: now,
                lost_ms: 0,
            };
            state.workers.insert(w.id, w.clone());
            Ok(Applied::Worker(w))
        }
        Op::WorkerLost(l) => {
            let w = state
                .workers
                .get_mut(&l.worker)
                .ok_or(Rejected::NoWorker(l.worker))?;
            w.alive = false;
            w.lost_ms = now;
            let w = w.clone();
            // Its jobs go back to the scheduler; the next attempt resumes from the last
            // checkpoint.
            for job in state.jobs.values_mut() {
                if job.workers.contains(&l.worker) && !is_finished(job.state()) {
                    job.worker = 0;
                    job.workers.clear();
                    job.updated_ms = now;
                }
            }
            Ok(Applied::Worker(w))
        }
        Op::SubmitJob(s) => {
            if !s.request_id.is_empty()
                && let Some(job) = state.jobs.values().find(|j| j.request_id == s.request_id)
            {
                return Ok(Applied::Job(Box::new(job.clone())));
            }
            state.next_job += 1;
            let job = Job {
                id: state.next_job,
                query: s.query.clone(),
                data_dir: s.data_dir.clone(),
                config_toml: s.config_toml.clone(),
                output_dir: s.output_dir.clone(),
                request_id: s.request_id.clone(),
                want_workers: s.workers,
                schema: s.schema.clone(),
                anchor_step: s.anchor_step.clone(),
                state: JobState::Pending.into(),
                submitted_ms: now,
                updated_ms: now,
                ..Job::default()
            };
            state.jobs.insert(job.id, job.clone());
            Ok(Applied::Job(Box::new(job)))
        }
        Op::AssignJob(a) => {
            if a.workers.is_empty() {
                return Err(Rejected::Empty);
            }
            for w in &a.workers {
                match state.workers.get(w) {
                    Some(w) if w.alive => {}
                    Some(_) => return Err(Rejected::DeadWorker(*w)),
                    None => return Err(Rejected::NoWorker(*w)),
                }
            }
            let job = job_mut(state, a.job)?;
            job.worker = a.workers[0];
            job.workers = a.workers.clone();
            (job.placement, job.replicas) = place(&job.placement, &job.replicas, &a.workers);
            job.attempt += 1;
            job.updated_ms = now;
            Ok(Applied::Job(Box::new(job.clone())))
        }
        Op::CancelJob(c) => {
            let job = job_mut(state, c.job)?;
            job.set_state(JobState::Cancelled);
            job.worker = 0;
            job.workers.clear();
            job.updated_ms = now;
            Ok(Applied::Job(Box::new(job.clone())))
        }
        Op::JobProgress(p) => {
            let job = job_mut(state, p.job)?;
            if job.worker != p.worker || job.attempt != p.attempt {
                return Err(Rejected::Stale {
                    job: p.job,
                    worker: p.worker,
                    attempt: p.attempt,
                    current: job.attempt,
                    current_worker: job.worker,
                });
            }
            job.set_state(p.state());
            // Only training moves them: a new attempt's ingest and the final report keep
            // the last epoch and step shown (a resumed attempt reports its checkpoint's).
            if p.state() == JobState::Train {
                job.epoch = p.epoch;
                job.step = p.step;
            }
            if !p.checkpoint.is_empty() {
                job.checkpoint = p.checkpoint.clone();
                job.checkpoint_step = p.checkpoint_step;
            }
            job.error = p.error.clone();
            job.updated_ms = now;
            if is_finished(p.state()) {
                job.worker = 0;
                job.workers.clear();
            }
            let mut job = job.clone();
            if p.state() == JobState::Ready {
                state.next_model += 1;
                let model = Model {
                    id: state.next_model,
                    job: job.id,
                    query: job.query.clone(),
                    path: p.model_path.clone(),
                    metrics_json: p.metrics_json.clone(),
                    created_ms: now,
                };
                job.model = model.id;
                state.models.insert(model.id, model);
                state.jobs.insert(job.id, job.clone());
            }
            for t in &p.tables {
                state.tables.insert(
                    t.name.clone(),
                    TableInfo {
                        job: job.id,
                        ..t.clone()
                    },
                );
            }
            Ok(Applied::Job(Box::new(job)))
        }
    }
}

/// Partitions per worker when a job is first placed.
pub const PARTITIONS_PER_WORKER: usize = 16;

/// A job's placement over `workers` and each partition's replica (see `Job::placement`,
/// `Job::replicas`): a new one dealt round-robin, each worker's replicas spread over the
/// others; or `old` with the partitions of workers not in `workers` moved to their
/// replica (else to the least loaded), then single partitions moved from the most to the
/// least loaded until their loads differ by at most one. A replica stays where it was
/// unless it is lost or now the owner; a new one goes to the worker holding fewest.
/// Deterministic: every coordinator computes the same.
pub fn place(old: &[u64], old_replicas: &[u64], workers: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let n = workers.len();
    if old.is_empty() {
        let parts = PARTITIONS_PER_WORKER * n;
        let placement: Vec<u64> = (0..parts).map(|p| workers[p % n]).collect();
        let replicas = if n < 2 {
            Vec::new()
        } else {
            // Partition p's owner is p % n; its replicas cycle through the other workers.
            (0..parts)
                .map(|p| workers[(p % n + 1 + (p / n) % (n - 1)) % n])
                .collect()
        };
        return (placement, replicas);
    }
    let mut placement = old.to_vec();
    let mut load: Vec<usize> = workers
        .iter()
        .map(|w| placement.iter().filter(|&x| x == w).count())
        .collect();
    let least = |load: &[usize], not: Option<usize>| {
        (0..load.len())
            .filter(|&i| Some(i) != not)
            .min_by_key(|&i| (load[i], i))
    };
    for (p, owner) in placement.iter_mut().enumerate() {
        if workers.contains(owner) {
            continue;
        }
        let replica = old_replicas
            .get(p)
            .and_then(|r| workers.iter().position(|w| w == r));
        if let Some(i) = replica.or_else(|| least(&load, None)) {
            *owner = workers[i];
            load[i] += 1;
        }
    }
    let most = |load: &[usize]| (0..load.len()).max_by_key(|&i| (load[i], i));
    while let (Some(lo), Some(hi)) = (least(&load, None), most(&load))
        && load[hi] > load[lo] + 1
    {
        if let Some(p) = placement.iter().rposition(|&x| x == workers[hi]) {
            placement[p] = workers[lo];
        }
        load[hi] -= 1;
        load[lo] += 1;
    }
    if n < 2 {
        return (placement, Vec::new());
    }
    let mut kept: Vec<Option<u64>> = (0..placement.len())
        .map(|p| {
            old_replicas
                .get(p)
                .copied()
                .filter(|r| workers.contains(r) && *r != placement[p])
        })
        .collect();
    let mut held: Vec<usize> = workers
        .iter()
        .map(|w| kept.iter().filter(|r| **r == Some(*w)).count())
        .collect();
    for (p, replica) in kept.iter_mut().enumerate() {
        if replica.is_none() {
            let owner = workers.iter().position(|w| *w == placement[p]);
            if let Some(i) = least(&held, owner) {
                *replica = Some(workers[i]);
                held[i] += 1;
            }
        }
    }
    (placement, kept.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relgraph_proto::cluster::{AssignJob, JobProgress, RegisterWorker, SubmitJob, WorkerLost};

    fn cmd(op: Op) -> Command {
        Command {
            now_ms: 7,
            op: Some(op),
        }
    }

    #[test]
    fn placement_moves_only_what_a_changed_group_needs() {
        let (first, replicas) = place(&[], &[], &[1, 2, 3]);
        assert_eq!(first.len(), 48);
        assert_eq!(&first[..4], &[1, 2, 3, 1]);
        let count = |p: &[u64], w: u64| p.iter().filter(|&&x| x == w).count();
        // Every partition has a replica elsewhere; worker 3's are spread over 1 and 2.
        assert!(first.iter().zip(&replicas).all(|(a, b)| a != b));
        let of_3: Vec<u64> = (0..48)
            .filter(|&p| first[p] == 3)
            .map(|p| replicas[p])
            .collect();
        assert_eq!((count(&of_3, 1), count(&of_3, 2)), (8, 8));
        // Worker 3 lost: each of its 16 partitions goes to its replica, 8 and 8; the
        // others keep theirs, and every partition has a replica again, not its owner.
        let (second, replicas2) = place(&first, &replicas, &[1, 2]);
        for p in 0..48 {
            let want = if first[p] == 3 { replicas[p] } else { first[p] };
            assert_eq!(second[p], want);
            assert_ne!(replicas2[p], second[p]);
            if replicas[p] != 3 && replicas[p] != second[p] {
                assert_eq!(replicas2[p], replicas[p], "a kept replica moved");
            }
        }
        assert_eq!((count(&second, 1), count(&second, 2)), (24, 24));
        // A new worker joins: it gets its share, and only that moves.
        let (third, replicas3) = place(&second, &replicas2, &[1, 2, 4]);
        assert_eq!(
            (count(&third, 1), count(&third, 2), count(&third, 4)),
            (16, 16, 16)
        );
        let moved = second.iter().zip(&third).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 16);
        assert!(third.iter().zip(&replicas3).all(|(a, b)| a != b));
        // The same group again: nothing moves.
        assert_eq!(place(&third, &replicas3, &[1, 2, 4]), (third, replicas3));
        // One worker: no replicas.
        assert!(place(&[], &[], &[7]).1.is_empty());
    }

    #[test]
    fn a_lost_worker_hands_its_job_to_a_new_attempt_and_old_reports_are_refused() {
        let mut s = ClusterState::default();
        for addr in ["a", "b"] {
            apply(
                &mut s,
                &cmd(Op::RegisterWorker(RegisterWorker {
                    addr: addr.into(),
                    capacity: 1,
                })),
            )
            .expect("applies");
        }
        apply(&mut s, &cmd(Op::SubmitJob(SubmitJob::default()))).expect("applies");
        apply(
            &mut s,
            &cmd(Op::AssignJob(AssignJob {
                job: 1,
                workers: vec![1],
            })),
        )
        .expect("applies");
        let report = |worker, attempt, step| {
            cmd(Op::JobProgress(JobProgress {
                job: 1,
                worker,
                attempt,
                state: JobState::Train.into(),
                step,
                checkpoint: format!("ck{step}"),
                checkpoint_step: step,
                ..JobProgress::default()
            }))
        };
        apply(&mut s, &report(1, 1, 10)).expect("applies");
        apply(&mut s, &cmd(Op::WorkerLost(WorkerLost { worker: 1 }))).expect("applies");
        assert_eq!(s.jobs[&1].worker, 0);
        assert_eq!(
            apply(
                &mut s,
                &cmd(Op::AssignJob(AssignJob {
                    job: 1,
                    workers: vec![1]
                }))
            ),
            Err(Rejected::DeadWorker(1))
        );
        apply(
            &mut s,
            &cmd(Op::AssignJob(AssignJob {
                job: 1,
                workers: vec![2],
            })),
        )
        .expect("applies");
        let job = &s.jobs[&1];
        assert_eq!((job.worker, job.attempt, job.checkpoint_step), (2, 2, 10));
        // Stages before training and the final report leave the step shown as it was.
        let stage = |state: JobState| {
            cmd(Op::JobProgress(JobProgress {
                job: 1,
                worker: 2,
                attempt: 2,
                state: state.into(),
                ..JobProgress::default()
            }))
        };
        apply(&mut s, &stage(JobState::Ingest)).expect("applies");
        assert_eq!(
            (s.jobs[&1].state(), s.jobs[&1].step),
            (JobState::Ingest, 10)
        );
        let before = s.clone();
        assert!(matches!(
            apply(&mut s, &report(1, 1, 20)),
            Err(Rejected::Stale { .. })
        ));
        assert_eq!(s, before);
        apply(&mut s, &report(2, 2, 20)).expect("applies");
        assert_eq!(s.jobs[&1].checkpoint, "ck20");
        apply(&mut s, &stage(JobState::Ready)).expect("applies");
        assert_eq!((s.jobs[&1].state(), s.jobs[&1].step), (JobState::Ready, 20));
    }
}
