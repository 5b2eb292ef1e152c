//! End-to-end tests of the cluster: real `relgraph coordinator` and `relgraph worker`
//! processes on 127.0.0.1 with ports picked by the OS, killed with SIGKILL mid-flight.
//! Every wait is bounded; every process is killed when its handle drops.

mod common;

use common::path;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "s3cret-token";
const CHURN: &str = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0";

struct Proc {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with(name, args, &[])
    }

    /// [`Proc::start`] with more environment variables.
    fn start_with(name: &str, args: &[&str], env: &[(&str, PathBuf)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relgraph"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("RELGRAPH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relgraph");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            name: name.to_string(),
        }
    }

    /// The first stdout line containing `needle`, within `secs`.
    fn line(&self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no line with {needle:?} within {secs} s", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited before printing {needle:?}", self.name)
                }
            }
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `secs` for a submission to end and returns its output; kills it and fails
/// the test otherwise.
fn finish(mut child: Child, secs: u64, what: &str) -> std::process::Output {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::process::Output {
        status,
        stdout: reader.join().expect("stdout reader"),
        stderr: Vec::new(),
    }
}

fn word_after<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
}

/// Starts coordinator `id`; joins `join` when given. Returns it with its gRPC and
/// metrics addresses.
/// Coordinator `id` with its Flight router: (process, gRPC, metrics, router addresses).
fn coordinator(
    dir: &Path,
    id: u64,
    join: Option<&str>,
    lease_ms: u64,
) -> (Proc, String, String, String) {
    let data = dir.join(format!("coordinator-{id}"));
    let config = dir.join(format!("coordinator-{id}.toml"));
    let mut text = format!(
        "id = {id}\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\nlease_ms = {lease_ms}\nmetrics_listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        path(&data)
    );
    if let Some(j) = join {
        text.push_str(&format!("join = [\"{j}\"]\n"));
    }
    std::fs::write(&config, text).expect("write config");
    let p = Proc::start(
        &format!("coordinator {id}"),
        &[
            "coordinator",
            "--config",
            path(&config),
            "--flight-listen",
            "127.0.0.1:0",
        ],
    );
    let line = p.line("listening on", 60);
    let addr = word_after(&line, "on").to_string();
    let metrics = word_after(&line, "metrics").to_string();
    let router = word_after(&p.line("router listening on", 60), "on").to_string();
    (p, addr, metrics, router)
}

/// `GET /metrics` over a plain socket.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

fn admin(args: &[&str], coordinators: &[String]) -> Value {
    let mut full: Vec<&str> = vec!["admin"];
    full.extend_from_slice(args);
    for c in coordinators {
        full.extend_from_slice(&["--coordinator", c]);
    }
    full.extend_from_slice(&["--json", "--token", TOKEN]);
    let out = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(&full)
        .output()
        .expect("run admin");
    assert!(
        out.status.success(),
        "relgraph {full:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("admin json")
}

/// Polls `f` every 100 ms until it returns something, for at most `secs`.
fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

fn three_coordinators(dir: &Path, lease_ms: u64) -> Vec<(Proc, String, String, String)> {
    let first = coordinator(dir, 1, None, lease_ms);
    let a1 = first.1.clone();
    let mut all = vec![first];
    for id in 2..=3 {
        all.push(coordinator(dir, id, Some(&a1), lease_ms));
    }
    all
}

fn leader(status: &Value) -> Option<u64> {
    status["leader"].as_u64().filter(|&l| l != 0)
}

#[test]
fn three_coordinators_elect_redirect_authenticate_and_survive_their_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_coordinators(dir.path(), 3000);
    let addrs: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    // All three are voters; a follower answers status itself and names the leader.
    let status = until(30, "three voters", || {
        let s = admin(&["status"], &addrs[2..]);
        (s["voters"].as_array().map(Vec::len) == Some(3) && leader(&s).is_some()).then_some(s)
    });
    let old = leader(&status).expect("leader");
    // A write sent to a follower is redirected to the leader.
    let follower = addrs[if old == 1 { 1 } else { 0 }].clone();
    let cancel = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args([
            "admin",
            "cancel",
            "99",
            "--coordinator",
            &follower,
            "--token",
            TOKEN,
        ])
        .output()
        .expect("run admin");
    let err = String::from_utf8_lossy(&cancel.stderr);
    assert!(
        !cancel.status.success() && err.contains("job 99 does not exist"),
        "{err}"
    );
    // Without the token nothing is answered.
    let anon = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(["admin", "status", "--coordinator", &addrs[0]])
        .env_remove("RELGRAPH_TOKEN")
        .output()
        .expect("run admin");
    let err = String::from_utf8_lossy(&anon.stderr);
    assert!(!anon.status.success() && err.contains("token"), "{err}");
    // Metrics on every node.
    for n in &nodes {
        let text = scrape(&n.2);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("relgraph_raft_term"), "{text}");
        assert!(text.contains("relgraph_raft_commit_index"), "{text}");
    }
    // Kill the leader: the other two elect a new one, and still answer.
    let (leader_proc, ..) = nodes.remove((old - 1) as usize);
    leader_proc.kill();
    let rest: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    let status = until(30, "a new leader", || {
        let s = admin(&["status"], &rest);
        leader(&s).filter(|&l| l != old).map(|_| s)
    });
    assert!(status["term"].as_u64() > Some(0));
    let jobs = admin(&["jobs"], &rest);
    assert_eq!(jobs, Value::Array(Vec::new()));
}

/// A small training job long enough to be interrupted twice: ten full epochs (no early stop), one thread.
const JOB_CONFIG: &str = "channels = 32\nencoder_blocks = 1\nfanouts = [16, 8]\nepochs = 10\nmax_steps_per_epoch = 16\nbatch_size = 128\npatience = 100\ncheckpoint_every = 5\n";

fn job(admin_addrs: &[String]) -> Option<Value> {
    let jobs = admin(&["jobs"], admin_addrs);
    jobs.as_array().and_then(|j| j.first().cloned())
}

#[test]
fn a_job_survives_the_raft_leader_and_its_worker_being_killed_and_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = retail(root, [600, 120, 360]);
    let config = write_config(root, "job.toml", JOB_CONFIG);

    let mut nodes = three_coordinators(root, 1500);
    let addrs: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    let (mut workers, _) = start_workers(2, &addrs, None, None);

    // Submit and follow from a separate client process.
    let out = root.join("model");
    let mut submit_args = vec!["train", CHURN, "--data", path(&data), "--out", path(&out)];
    submit_args.extend_from_slice(&["--config", path(&config), "--json", "--token", TOKEN]);
    submit_args.extend_from_slice(&["--workers", "1"]);
    for a in &addrs {
        submit_args.extend_from_slice(&["--coordinator", a]);
    }
    let submit = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(&submit_args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("submit");

    // First checkpoint recorded in Raft: kill the leader.
    until(120, "a first checkpoint", || {
        job(&addrs).filter(|j| j["checkpoint_step"].as_u64() > Some(0))
    });
    let s = admin(&["status"], &addrs);
    let old = leader(&s).expect("leader");
    let (p, ..) = nodes.remove((old - 1) as usize);
    p.kill();
    let rest: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    // The job goes on under the new leader: another checkpoint is recorded.
    let before = job(&rest).expect("job")["checkpoint_step"].as_u64();
    let j = until(120, "a checkpoint under the new leader", || {
        job(&rest).filter(|j| j["checkpoint_step"].as_u64() > before)
    });
    assert_eq!(j["state"], "train", "{j}");
    // Kill the job's worker: its lease runs out, the job moves to the other worker and
    // resumes from the last checkpoint.
    let first_worker = j["worker"].as_u64().expect("worker") as usize;
    let (killed, _) = workers.remove(first_worker - 1);
    killed.kill();
    let j = until(120, "the job on its second attempt", || {
        job(&rest).filter(|j| j["attempt"].as_u64() == Some(2))
    });
    assert_ne!(j["worker"].as_u64(), Some(first_worker as u64), "{j}");
    workers[0].0.line("resuming from", 60);

    let output = finish(submit, 300, "the submission");
    assert!(output.status.success(), "submit failed");
    let report: Value = serde_json::from_slice(&output.stdout).expect("submit json");
    assert_eq!(report["job"]["state"], "ready", "{report}");
    assert_eq!(report["report"]["epochs"], 10, "{report}");

    // One job, run to the end once; one model.
    let jobs = admin(&["jobs"], &rest);
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs[0]["attempt"], 2);
    let models = admin(&["models"], &rest);
    assert_eq!(models.as_array().map(Vec::len), Some(1), "{models}");
    let tables = admin(&["tables"], &rest);
    assert!(tables.as_array().is_some_and(|t| t.len() >= 5), "{tables}");

    // The resumed run ends with exactly the model of an uninterrupted run on one thread.
    let local = root.join("local");
    let ok = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(["train", CHURN, "--data", path(&data), "--out", path(&local)])
        .args(["--config", path(&config), "--threads", "1", "--json"])
        .stdout(Stdio::null())
        .status()
        .expect("local train");
    assert!(ok.success());
    let read = |p: PathBuf| std::fs::read(p).expect("params.bin");
    assert!(
        read(out.join("params.bin")) == read(local.join("params.bin")),
        "the resumed model differs from an uninterrupted run"
    );
}

/// A retail world of `[customers, products, days]` generated into `root/data`.
fn retail(root: &Path, [customers, products, days]: [u32; 3]) -> PathBuf {
    let data = root.join("data");
    let (customers, products, days) = (
        customers.to_string(),
        products.to_string(),
        days.to_string(),
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(["generate", "retail", "--out", path(&data)])
        .args([
            "--customers",
            &customers,
            "--products",
            &products,
            "--days",
            &days,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("generate");
    assert!(ok.success());
    data
}

/// `text` written to `root/name`.
fn write_config(root: &Path, name: &str, text: &str) -> PathBuf {
    let config = root.join(name);
    std::fs::write(&config, text).expect("config");
    config
}

/// Starts `n` workers; the first serves the ready models of `serve` when given; with
/// `stores`, worker `i` keeps its job partitions in `stores/worker-i`. Returns each with
/// its metrics address, and the first one's Flight address.
fn start_workers(
    n: usize,
    coordinators: &[String],
    serve: Option<&Path>,
    stores: Option<&Path>,
) -> (Vec<(Proc, String)>, String) {
    let mut first = String::new();
    let workers = (1..=n)
        .map(|i| {
            let mut args = vec!["worker", "--threads", "1", "--token", TOKEN];
            for a in coordinators {
                args.extend_from_slice(&["--coordinator", a]);
            }
            // The first worker serves the data's ready models, logging appends beside it.
            let store = serve.map(|dir| dir.with_file_name("serve-store"));
            if let (1, Some(dir), Some(store)) = (i, serve, &store) {
                args.extend_from_slice(&["--serve-data", path(dir)]);
                args.extend_from_slice(&["--serve-store", path(store)]);
            }
            let partitions = stores.map(|s| s.join(format!("worker-{i}")));
            if let Some(p) = &partitions {
                args.extend_from_slice(&["--store", path(p)]);
            }
            let w = Proc::start(&format!("worker {i}"), &args);
            let listening = w.line("listening on", 60);
            if i == 1 {
                first = word_after(&listening, "on").to_string();
            }
            let metrics = word_after(&listening, "metrics").to_string();
            w.line("registered as", 60);
            (w, metrics)
        })
        .collect();
    (workers, first)
}

#[test]
fn three_workers_train_data_parallel_to_the_model_one_worker_trains_through_a_worker_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = retail(root, [2000, 300, 540]);
    let config = write_config(
        root,
        "small.toml",
        "channels = 64\nencoder_blocks = 1\nfanouts = [32, 16]\nepochs = 4\nmax_steps_per_epoch = 20\n",
    );
    let nodes = three_coordinators(root, 3000);
    let addrs: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    let stores = root.join("stores");
    let (mut workers, serving) = start_workers(3, &addrs, Some(&data), Some(&stores));

    let out = root.join("cluster-model");
    let mut args = vec!["train", CHURN, "--data", path(&data), "--out", path(&out)];
    args.extend_from_slice(&["--config", path(&config), "--json", "--token", TOKEN]);
    for a in &addrs {
        args.extend_from_slice(&["--coordinator", a]);
    }
    let submit = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("submit");
    // After the first checkpoint, kill one of the three: the job resumes from the
    // checkpoint on the other two, still the same computation.
    let j = until(180, "a first checkpoint", || {
        job(&addrs).filter(|j| j["checkpoint_step"].as_u64() > Some(0))
    });
    assert_eq!(j["workers"].as_array().map(Vec::len), Some(3), "{j}");
    let (killed, _) = workers.pop().expect("worker");
    killed.kill();
    // The lost worker's partitions moved to the survivors holding their replicas: each
    // trains from its store alone, without reading the data directory again.
    for (w, _) in &workers {
        w.line("kept its partitions from an earlier attempt", 120);
    }
    workers[0]
        .0
        .line("resuming from its store's checkpoint", 120);
    let cluster = finish(submit, 300, "the submission");
    assert!(cluster.status.success(), "submit failed");
    let cluster: Value = serde_json::from_slice(&cluster.stdout).expect("json");
    assert_eq!(
        cluster["job"]["workers"].as_array().map(Vec::len),
        Some(0),
        "a finished job holds no workers: {cluster}"
    );
    let jobs = admin(&["jobs"], &addrs);
    assert_eq!(jobs[0]["state"], "ready");
    assert_eq!(jobs[0]["attempt"], 2, "{jobs}");
    // A survivor that could not reach the killed worker said so in a heartbeat (so the
    // leader declared it lost after a third of its lease).
    let suspected: f64 = nodes
        .iter()
        .flat_map(|n| {
            let text = scrape(&n.2);
            text.lines()
                .filter_map(|l| l.strip_prefix("relgraph_workers_suspected_total "))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(suspected >= 1.0, "no survivor named the killed worker");
    // The first worker serves the ready model over its Flight service, under the name of
    // the job's output directory, once the coordinator says it is ready.
    workers[0].0.line("serving model", 60);
    let scores = score_over_flight(&serving, "cluster-model", &["CU-1003", "CU-1001"]);
    assert_eq!(scores.len(), 2, "{scores:?}");
    assert!(scores.iter().all(|p| (0.0..=1.0).contains(p)), "{scores:?}");
    // Any coordinator's router finds that worker and forwards the same ticket to it.
    let routed = score_over_flight(&nodes[2].3, "cluster-model", &["CU-1003", "CU-1001"]);
    assert_eq!(routed, scores);
    let exchanged =
        exchange_over_flight(&nodes[2].3, "cluster-model", &[&["CU-1003"], &["CU-1001"]]);
    assert_eq!(exchanged, scores);
    // The router lists what its workers serve: the model and the data's tables.
    let listed: Vec<arrow_flight::FlightDescriptor> = with_flight(&nodes[2].3, async |c| {
        use futures::TryStreamExt;
        let infos: Vec<arrow_flight::FlightInfo> = c
            .list_flights(Vec::new())
            .await
            .expect("list_flights")
            .try_collect()
            .await
            .expect("infos");
        infos
            .into_iter()
            .filter_map(|i| i.flight_descriptor)
            .collect()
    });
    assert!(
        listed
            .iter()
            .any(|d| String::from_utf8_lossy(&d.cmd).contains("cluster-model"))
    );
    assert!(
        listed.iter().any(|d| d.path == ["tables", "orders"]),
        "{listed:?}"
    );
    // Orders appended through the router reach the serving worker's log (acknowledged
    // once durable there) and move that customer's next score, and no one else's.
    let anchor = anchor_over_flight(&nodes[2].3, "cluster-model", "CU-1003");
    let ack = append_orders_over_flight(&nodes[2].3, "CU-1003", anchor - 60, 12);
    assert_eq!(ack["rows"], 12, "{ack}");
    assert!(ack.get("duplicate").is_none(), "{ack}");
    // The put is named: a retry through the router adds nothing on any worker.
    let retried = append_orders_over_flight(&nodes[2].3, "CU-1003", anchor - 60, 12);
    assert_eq!(retried["duplicate"], true, "{retried}");
    assert_eq!(
        (&retried["seq"], &retried["total"]),
        (&ack["seq"], &ack["total"])
    );
    let after = score_over_flight(&nodes[2].3, "cluster-model", &["CU-1003", "CU-1001"]);
    assert_ne!(after[0], scores[0], "the appended orders changed nothing");
    assert_eq!(after[1], scores[1]);
    assert_eq!(
        after,
        score_over_flight(&serving, "cluster-model", &["CU-1003", "CU-1001"])
    );
    // The survivors stepped in lockstep through both attempts (the same count), and say
    // so on /metrics.
    let steps: Vec<u64> = workers
        .iter()
        .map(|(_, metrics)| {
            let text = scrape(metrics);
            for name in ["relgraph_sample_seconds", "relgraph_rows_loaded"] {
                assert!(
                    text.contains(name),
                    "{name} missing from a worker's metrics:\n{text}"
                );
            }
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            };
            // Each worker labelled its own entities and encoded its own rows, and read
            // the others' encoded rows over Flight; the resumed attempt kept every
            // partition placed on it from the first one (its own and its replicas).
            for name in [
                "relgraph_rows_stored",
                "relgraph_partitions_reused",
                "relgraph_labels_computed",
                "relgraph_feature_rows_held",
                "relgraph_feature_rows_fetched_total",
            ] {
                assert!(value(name) > 0.0, "{name} is 0:\n{text}");
            }
            value("relgraph_training_steps_total") as u64
        })
        .collect();
    assert!(steps.iter().all(|&s| s == steps[0] && s > 0), "{steps:?}");

    let local = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(["train", CHURN, "--data", path(&data)])
        .args(["--out", path(&root.join("local-model"))])
        .args(["--config", path(&config), "--threads", "1", "--json"])
        .output()
        .expect("local train");
    assert!(local.status.success());
    let local: Value = serde_json::from_slice(&local.stdout).expect("json");
    let auroc = |v: &Value| v["metrics"]["test"]["auroc"].as_f64().expect("test auroc");
    let (c, l) = (auroc(&cluster["report"]), auroc(&local));
    eprintln!("test AUROC: 3 workers {c:.4}, 1 worker {l:.4}");
    assert!((c - l).abs() <= 0.01, "3 workers {c}, 1 worker {l}");
    assert!(c > 0.55, "the model learned nothing: {c}");
}

/// Runs `f` with an authenticated Flight client of `addr` on a runtime of its own.
fn with_flight<T>(addr: &str, f: impl AsyncFnOnce(&mut arrow_flight::FlightClient) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut c = arrow_flight::FlightClient::new(channel);
        let session = c
            .handshake(TOKEN.as_bytes().to_vec())
            .await
            .expect("handshake");
        let session = String::from_utf8(session.to_vec()).expect("utf8 session");
        c.add_header("authorization", &format!("Bearer {session}"))
            .expect("header");
        f(&mut c).await
    })
}

fn probs(batches: &[arrow::array::RecordBatch]) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let p = b
                .column_by_name("prob")
                .expect("prob")
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .expect("f64");
            p.values().to_vec()
        })
        .collect()
}

/// The churn probabilities of `keys` from model `model` of the Flight service at `addr`.
fn score_over_flight(addr: &str, model: &str, keys: &[&str]) -> Vec<f64> {
    use futures::TryStreamExt;
    with_flight(addr, async |c| {
        let ticket = serde_json::json!({"v": 1, "model": model, "keys": keys}).to_string();
        let batches: Vec<arrow::array::RecordBatch> = c
            .do_get(arrow_flight::Ticket::new(ticket))
            .await
            .expect("do_get")
            .try_collect()
            .await
            .expect("batches");
        probs(&batches)
    })
}

/// The anchor time (seconds) at which model `model` of `addr` scores `key`.
fn anchor_over_flight(addr: &str, model: &str, key: &str) -> i64 {
    use futures::TryStreamExt;
    with_flight(addr, async |c| {
        let ticket = serde_json::json!({"v": 1, "model": model, "keys": [key]}).to_string();
        let batches: Vec<arrow::array::RecordBatch> = c
            .do_get(arrow_flight::Ticket::new(ticket))
            .await
            .expect("do_get")
            .try_collect()
            .await
            .expect("batches");
        batches[0]
            .column_by_name("anchor_time")
            .expect("anchor_time")
            .as_any()
            .downcast_ref::<arrow::array::TimestampSecondArray>()
            .expect("seconds")
            .value(0)
    })
}

/// Appends `n` orders of `customer` at `time` to `orders` through `addr`'s `DoPut`, as
/// a put named by its arguments; returns the acknowledgement.
fn append_orders_over_flight(addr: &str, customer: &str, time: i64, n: usize) -> Value {
    use futures::TryStreamExt;
    let ids: Vec<String> = (0..n).map(|i| format!("O-cluster-{i}")).collect();
    let batch = common::orders(&ids, customer, "P-5001", time);
    let put = serde_json::json!({"v": 1, "op": "append", "table": "orders",
        "id": format!("{customer}-{time}-{n}")});
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(put.to_string());
    with_flight(addr, async |c| {
        let input = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter([Ok(batch)]));
        let acks: Vec<arrow_flight::PutResult> = c
            .do_put(input)
            .await
            .expect("do_put")
            .try_collect()
            .await
            .expect("acknowledgements");
        serde_json::from_slice(&acks[0].app_metadata).expect("json acknowledgement")
    })
}

/// The same through `DoExchange`, one request per element of `requests`.
fn exchange_over_flight(addr: &str, model: &str, requests: &[&[&str]]) -> Vec<f64> {
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
    let batches: Vec<Result<arrow::array::RecordBatch, arrow_flight::error::FlightError>> =
        requests
            .iter()
            .map(|keys| {
                let column = std::sync::Arc::new(arrow::array::StringArray::from(keys.to_vec()));
                Ok(arrow::array::RecordBatch::try_new(schema.clone(), vec![column]).expect("keys"))
            })
            .collect();
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(
        serde_json::json!({"v": 1, "model": model}).to_string(),
    );
    with_flight(addr, async |c| {
        let input = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter(batches));
        let answers: Vec<arrow::array::RecordBatch> = c
            .do_exchange(input)
            .await
            .expect("exchange")
            .try_collect()
            .await
            .expect("answers");
        probs(&answers)
    })
}

#[test]
fn local_runs_a_coordinator_and_two_workers_in_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = retail(root, [400, 80, 300]);
    let config = write_config(
        root,
        "tiny.toml",
        "channels = 16\nencoder_blocks = 1\nfanouts = [8, 4]\nepochs = 2\nmax_steps_per_epoch = 4\n",
    );
    let local = Proc::start("local", &["local", "--workers", "2", "--threads", "1"]);
    let line = local.line("local cluster:", 60);
    let addr = word_after(&line, "coordinator")
        .trim_end_matches(',')
        .to_string();
    let out = root.join("model");
    // A schema override and an anchor step travel with the job to its workers.
    let schema = root.join("schema.toml");
    std::fs::write(
        &schema,
        "[tables.customers]\nprimary_key = \"customer_id\"\n",
    )
    .expect("schema");
    let submit_args = |step: &str| {
        let mut args = vec!["train", CHURN, "--data", path(&data), "--out", path(&out)];
        args.extend(["--config", path(&config), "--coordinator", &addr, "--json"]);
        args.extend(["--schema", path(&schema), "--step", step, "days"]);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let refused = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(submit_args("many"))
        .output()
        .expect("submit");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--step"),
        "{stderr}"
    );
    let submit = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(submit_args("45"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("submit");
    let submitted = finish(submit, 180, "the submission");
    assert!(submitted.status.success(), "submit failed");
    let report: Value = serde_json::from_slice(&submitted.stdout).expect("json");
    assert_eq!(report["job"]["state"], "ready", "{report}");
    assert_eq!(
        report["job"]["anchor_step"],
        serde_json::json!(["45", "days"])
    );
    assert!(
        report["job"]["schema"]
            .as_str()
            .is_some_and(|s| s.ends_with("schema.toml"))
    );
    // The same step locally gives the same number of training examples.
    let alone = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args([
            "train",
            CHURN,
            "--data",
            path(&data),
            "--out",
            path(&root.join("alone")),
        ])
        .args(["--config", path(&config), "--json", "--step", "45", "days"])
        .args(["--schema", path(&schema)])
        .output()
        .expect("local train");
    let alone: Value = serde_json::from_slice(&alone.stdout).expect("json");
    assert_eq!(
        report["report"]["examples"]["train"], alone["examples"]["train"],
        "{report}"
    );
    let status = admin(&["status"], std::slice::from_ref(&addr));
    let workers = status["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{status}");
    assert!(out.join("model.json").exists() && out.join("params.bin").exists());
}

#[test]
fn a_cluster_speaks_tls_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = retail(root, [300, 60, 300]);
    let config = write_config(
        root,
        "tiny.toml",
        "channels = 16\nencoder_blocks = 1\nfanouts = [8, 4]\nepochs = 1\nmax_steps_per_epoch = 3\n",
    );
    // A certificate for localhost and 127.0.0.1, signed by a test CA.
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let env = [
        ("RELGRAPH_TLS_CERT", tls.join("node.pem")),
        ("RELGRAPH_TLS_KEY", tls.join("node.key")),
        ("RELGRAPH_TLS_CA", tls.join("ca.pem")),
    ];
    let local = Proc::start_with(
        "local over TLS",
        &["local", "--workers", "2", "--threads", "1"],
        &env,
    );
    let line = local.line("local cluster:", 60);
    let addr = word_after(&line, "coordinator")
        .trim_end_matches(',')
        .to_string();
    // Trusting the CA: a data-parallel job runs (registration, heartbeats, the ring
    // all-reduce and split-graph sampling between the two workers, all over TLS).
    let out = root.join("model");
    let submitted = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(["train", CHURN, "--data", path(&data), "--out", path(&out)])
        .args(["--config", path(&config), "--coordinator", &addr, "--json"])
        .env("RELGRAPH_TLS_CA", tls.join("ca.pem"))
        .output()
        .expect("submit");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let report: Value = serde_json::from_slice(&submitted.stdout).expect("json");
    assert_eq!(report["job"]["state"], "ready", "{report}");
    // Plain HTTP/2, or TLS trusting another authority, gets nowhere.
    for trust in [None, Some(tls.join("node.pem"))] {
        let mut admin = Command::new(env!("CARGO_BIN_EXE_relgraph"));
        admin.args(["admin", "status", "--coordinator", &addr, "--json"]);
        admin.env_remove("RELGRAPH_TLS_CA");
        if let Some(ca) = &trust {
            admin.env("RELGRAPH_TLS_CA", ca);
        }
        let refused = admin.output().expect("admin");
        assert!(
            !refused.status.success(),
            "{trust:?}: admin status succeeded"
        );
    }
}
