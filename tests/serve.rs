//! Serving end to end (ARCHITECTURE.md §8): `relgraph serve` as a real process on
//! 127.0.0.1 port 0, called with the Arrow Flight crate's own client. Authentication,
//! scores, recommendations, request limits, appended rows that change the next answer,
//! appends that survive `kill -9`, and a new model version swapped in under load.

mod common;

use common::{orders, path, relgraph};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, Float64Array, RecordBatch, StringArray, TimestampSecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use tonic::Code;

const SMALL: &str =
    "channels = 32\nencoder_blocks = 1\nfanouts = [32, 16]\nepochs = 2\nmax_steps_per_epoch = 20\n";
const CHURN: &str = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0";
const RECS: &str = "PREDICT LIST_DISTINCT(ORDERS.PRODUCT_ID, 0, 14, days) RANK TOP 5 FOR EACH CUSTOMERS.CUSTOMER_ID";
const TOKEN: &str = "s3cret-token";

/// One generated retail world and two small models, shared by the tests of this file.
struct World {
    root: PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-world");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("world dir");
        let data = root.join("data");
        relgraph(&[
            "generate",
            "retail",
            "--out",
            path(&data),
            "--customers",
            "1500",
            "--products",
            "200",
            "--days",
            "400",
        ]);
        let config = root.join("small.toml");
        std::fs::write(&config, SMALL).expect("config");
        for (name, query) in [("churn", CHURN), ("recs", RECS)] {
            relgraph(&[
                "train",
                query,
                "--data",
                path(&data),
                "--out",
                path(&root.join(name)),
                "--config",
                path(&config),
            ]);
        }
        World { root }
    })
}

/// A `relgraph serve` process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(models: &[(&str, &Path)], store: &Path) -> Server {
    let w = world();
    let mut args = vec![
        "serve".to_string(),
        "--data".into(),
        path(&w.root.join("data")).into(),
        "--store".into(),
        path(store).into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--token".into(),
        TOKEN.into(),
        "--max-keys".into(),
        "100".into(),
    ];
    for (name, dir) in models {
        args.push("--model".into());
        args.push(format!("{name}={}", path(dir)));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start relgraph serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("serving on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server says where it listens");
    Server { child, addr }
}

async fn client(addr: &str, token: Option<&str>) -> FlightClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut c = FlightClient::new(channel);
    if let Some(t) = token {
        let session = c.handshake(t.as_bytes().to_vec()).await.expect("handshake");
        let session = String::from_utf8(session.to_vec()).expect("utf8 session");
        c.add_header("authorization", &format!("Bearer {session}"))
            .expect("header");
    }
    c
}

fn code(e: FlightError) -> Code {
    match e {
        FlightError::Tonic(s) => s.code(),
        other => panic!("not a status: {other}"),
    }
}

async fn get(c: &mut FlightClient, ticket: Value) -> Result<Vec<RecordBatch>, FlightError> {
    c.do_get(Ticket::new(ticket.to_string()))
        .await?
        .try_collect()
        .await
}

async fn append(
    c: &mut FlightClient,
    table: &str,
    rows: RecordBatch,
) -> Result<Value, FlightError> {
    let descriptor = FlightDescriptor::new_path(vec!["tables".into(), table.into()]);
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(rows)]));
    let acks: Vec<_> = c.do_put(data).await?.try_collect().await?;
    assert_eq!(acks.len(), 1, "one acknowledgement per batch");
    Ok(serde_json::from_slice(&acks[0].app_metadata).expect("ack json"))
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let c = batch.column_by_name(column).expect(column);
    let s = c.as_any().downcast_ref::<StringArray>().expect("utf8");
    s.iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

fn floats(batch: &RecordBatch, column: &str) -> Vec<f64> {
    let c = batch.column_by_name(column).expect(column);
    c.as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64")
        .values()
        .to_vec()
}

/// (product, score) of a customer's recommendations, best first.
async fn recommend(
    c: &mut FlightClient,
    customer: &str,
    k: usize,
    anchor: i64,
) -> Vec<(String, f64)> {
    let batches = get(
        c,
        json!({"v": 1, "op": "recommend", "model": "recs", "keys": [customer], "k": k, "anchor": anchor}),
    )
    .await
    .expect("recommend");
    let b = &batches[0];
    let ranks = b
        .column_by_name("rank")
        .and_then(|r| r.as_any().downcast_ref::<UInt32Array>().cloned())
        .expect("rank");
    assert_eq!(ranks.values().to_vec(), (1..=k as u32).collect::<Vec<_>>());
    strings(b, "item")
        .into_iter()
        .zip(floats(b, "score"))
        .collect()
}

/// Where the server looks from by default: the data's last timestamp.
async fn default_anchor(c: &mut FlightClient) -> i64 {
    let b = &get(c, json!({"v": 1, "model": "churn", "keys": ["CU-1000"]}))
        .await
        .expect("score")[0];
    b.column_by_name("anchor_time")
        .and_then(|a| a.as_any().downcast_ref::<TimestampSecondArray>().cloned())
        .expect("anchor_time")
        .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_clients_authenticate_score_recommend_and_append() {
    let w = world();
    let store = tempfile::tempdir().expect("store");
    let server = serve(
        &[
            ("churn", &w.root.join("churn")),
            ("recs", &w.root.join("recs")),
        ],
        store.path(),
    );
    // Nothing without the token.
    let mut anon = client(&server.addr, None).await;
    let e = anon.list_flights("").await.err();
    assert_eq!(e.map(code), Some(Code::Unauthenticated));
    assert_eq!(
        anon.handshake(b"wrong".to_vec()).await.err().map(code),
        Some(Code::Unauthenticated)
    );
    let mut c = client(&server.addr, Some(TOKEN)).await;

    // Flights: both models and every table.
    let infos: Vec<_> = c
        .list_flights("")
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("infos");
    let names: Vec<String> = infos
        .iter()
        .filter_map(|i| serde_json::from_slice::<Value>(&i.app_metadata).ok())
        .filter(|m| m["kind"] == "model")
        .map(|m| m["query"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, vec![CHURN.to_string(), RECS.to_string()]);
    assert!(infos.iter().any(|i| {
        i.flight_descriptor
            .as_ref()
            .is_some_and(|d| d.path == ["tables", "orders"])
    }));

    // Scores: one row per key, in the order asked, probabilities.
    let keys = ["CU-1007", "CU-1000", "CU-1003"];
    let batches = get(&mut c, json!({"v": 1, "model": "churn", "keys": keys}))
        .await
        .expect("score");
    assert_eq!(batches.len(), 1);
    assert_eq!(strings(&batches[0], "customer_id"), keys);
    assert!(
        floats(&batches[0], "prob")
            .iter()
            .all(|p| (0.0..=1.0).contains(p))
    );
    // The same through a PQL query naming the entities.
    let q = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR CUSTOMERS.CUSTOMER_ID IN ('CU-1007', 'CU-1000', 'CU-1003')";
    let again = get(&mut c, json!({"v": 1, "model": "churn", "query": q}))
        .await
        .expect("score by query");
    assert_eq!(floats(&again[0], "prob"), floats(&batches[0], "prob"));

    // Bad requests: clear errors with the right codes.
    let unknown = get(&mut c, json!({"v": 1, "model": "churn", "keys": ["CU-0"]})).await;
    assert_eq!(unknown.err().map(code), Some(Code::NotFound));
    let many: Vec<String> = (1000..1101).map(|i| format!("CU-{i}")).collect();
    let big = get(&mut c, json!({"v": 1, "model": "churn", "keys": many})).await;
    assert_eq!(big.err().map(code), Some(Code::ResourceExhausted));
    let wide = get(
        &mut c,
        json!({"v": 1, "model": "churn", "keys": ["CU-1000"], "fanouts": [500, 16]}),
    )
    .await;
    assert_eq!(wide.err().map(code), Some(Code::ResourceExhausted));
    let garbled = c.do_get(Ticket::new("not json")).await.err();
    assert_eq!(garbled.map(code), Some(Code::InvalidArgument));
    let not_ranking = get(
        &mut c,
        json!({"v": 1, "op": "recommend", "model": "churn", "keys": ["CU-1000"]}),
    )
    .await;
    assert_eq!(not_ranking.err().map(code), Some(Code::InvalidArgument));

    // Recommendations: k items, best first; excluding seen ones leaves the customer's
    // past products out.
    let anchor = default_anchor(&mut c).await;
    let customer = "CU-1004";
    let all = recommend(&mut c, customer, 200, anchor).await;
    assert!(all.windows(2).all(|p| p[0].1 >= p[1].1), "sorted by score");
    let seen_ticket = json!({"v": 1, "op": "recommend", "model": "recs", "keys": [customer], "k": 200, "exclude_seen": true, "anchor": anchor});
    let unseen = strings(
        &get(&mut c, seen_ticket.clone()).await.expect("exclude")[0],
        "item",
    );
    let bought: Vec<String> = std::fs::read_to_string(w.root.join("data/orders.csv"))
        .expect("orders")
        .lines()
        .filter(|l| l.split(',').nth(1) == Some(customer))
        .filter_map(|l| l.split(',').nth(2).map(str::to_string))
        .collect();
    assert!(!bought.is_empty(), "the customer has orders");
    assert!(
        unseen.iter().all(|i| !bought.contains(i)),
        "no past product"
    );
    assert_eq!(
        unseen.len(),
        all.iter().filter(|(i, _)| !bought.contains(i)).count()
    );

    // Freshness: a burst of orders of one product lifts it for that customer at the
    // same anchor, without retraining.
    let (item, _) = all
        .iter()
        .rev()
        .find(|(i, _)| !bought.contains(i))
        .expect("an unbought product")
        .clone();
    let rank_of = |list: &[(String, f64)]| list.iter().position(|(i, _)| *i == item);
    let before = rank_of(&all).expect("ranked");
    let ids: Vec<String> = (0..6).map(|i| format!("O-fresh-{i}")).collect();
    let ack = append(
        &mut c,
        "orders",
        orders(&ids, customer, &item, anchor - 3600),
    )
    .await
    .expect("append");
    assert_eq!(ack["rows"], 6);
    let after_list = recommend(&mut c, customer, 200, anchor).await;
    let after = rank_of(&after_list).expect("ranked");
    assert!(after < before, "{item}: rank {before} -> {after}");
    let now = get(&mut c, seen_ticket).await.expect("exclude")[0].clone();
    assert!(!strings(&now, "item").contains(&item), "now a seen product");

    // Appends are checked whole: unknown columns, repeated keys and bad values change
    // nothing.
    let total = ack["total"].as_u64().expect("total");
    let dup = append(&mut c, "orders", orders(&ids[..1], customer, &item, anchor)).await;
    assert_eq!(dup.err().map(code), Some(Code::InvalidArgument));
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("colour", DataType::Utf8, false),
    ]));
    let odd = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["O-odd"])),
            Arc::new(StringArray::from(vec!["red"])),
        ],
    )
    .expect("batch");
    let e = append(&mut c, "orders", odd)
        .await
        .expect_err("unknown column");
    assert!(e.to_string().contains("colour"), "{e}");
    let ok = append(
        &mut c,
        "orders",
        orders(&["O-last".into()], customer, &item, anchor),
    )
    .await
    .expect("append");
    assert_eq!(ok["total"].as_u64(), Some(total + 1));

    // An exchange answers each request in order.
    let descriptor = FlightDescriptor::new_cmd(json!({"v": 1, "model": "churn"}).to_string());
    let requests: Vec<Result<RecordBatch, FlightError>> =
        [vec!["CU-1001"], vec!["CU-1002", "CU-1000"]]
            .into_iter()
            .map(|k| {
                let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
                Ok(
                    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(k))])
                        .expect("keys"),
                )
            })
            .collect();
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter(requests));
    let answers: Vec<RecordBatch> = c
        .do_exchange(input)
        .await
        .expect("exchange")
        .try_collect()
        .await
        .expect("answers");
    let keys: Vec<String> = answers
        .iter()
        .flat_map(|b| strings(b, "customer_id"))
        .collect();
    assert_eq!(keys, ["CU-1001", "CU-1002", "CU-1000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let w = world();
    let store = tempfile::tempdir().expect("store");
    let models = [("churn", w.root.join("churn"))];
    let models: Vec<(&str, &Path)> = models.iter().map(|(n, d)| (*n, d.as_path())).collect();
    let mut acked = Vec::new();
    let (base, anchor);
    {
        let mut server = serve(&models, store.path());
        let mut c = client(&server.addr, Some(TOKEN)).await;
        anchor = default_anchor(&mut c).await;
        base = table_rows(&mut c, "orders").await;
        for b in 0..5 {
            let ids: Vec<String> = (0..20).map(|i| format!("O-durable-{b}-{i}")).collect();
            let ack = append(
                &mut c,
                "orders",
                orders(&ids, "CU-1010", "P-5003", anchor + b),
            )
            .await
            .expect("append");
            assert_eq!(ack["seq"], b + 1);
            acked.extend(ids);
        }
        // SIGKILL: no shutdown path runs.
        server.child.kill().expect("kill -9");
        server.child.wait().expect("wait");
    }
    let server = serve(&models, store.path());
    let mut c = client(&server.addr, Some(TOKEN)).await;
    assert_eq!(
        table_rows(&mut c, "orders").await,
        base + acked.len() as u64
    );
    // Every acknowledged key is there: appending it again is refused as a duplicate.
    for id in [&acked[0], &acked[57], &acked[99]] {
        let again = append(
            &mut c,
            "orders",
            orders(std::slice::from_ref(id), "CU-1010", "P-5003", anchor),
        )
        .await;
        assert_eq!(again.err().map(code), Some(Code::InvalidArgument), "{id}");
    }
    // And the next score looks from the newest appended time.
    assert_eq!(default_anchor(&mut c).await, anchor + 4);
}

async fn table_rows(c: &mut FlightClient, table: &str) -> u64 {
    let d = FlightDescriptor::new_path(vec!["tables".into(), table.into()]);
    c.get_flight_info(d)
        .await
        .expect("table info")
        .total_records as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_version_swaps_in_without_failing_requests() {
    let w = world();
    let store = tempfile::tempdir().expect("store");
    let dir = tempfile::tempdir().expect("model dir");
    let model = dir.path().join("churn");
    copy_dir(&w.root.join("churn"), &model);
    let server = serve(&[("churn", &model)], store.path());
    let addr = server.addr.clone();
    let scoring = tokio::spawn(async move {
        let mut c = client(&addr, Some(TOKEN)).await;
        let mut versions = std::collections::BTreeSet::new();
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_secs(120) {
            let b = get(
                &mut c,
                json!({"v": 1, "model": "churn", "keys": ["CU-1000", "CU-1001"]}),
            )
            .await
            .expect("no request fails during the swap");
            assert_eq!(b[0].num_rows(), 2);
            answered += 1;
            let info = c
                .get_flight_info(FlightDescriptor::new_cmd(
                    json!({"v": 1, "model": "churn"}).to_string(),
                ))
                .await
                .expect("info");
            let meta: Value = serde_json::from_slice(&info.app_metadata).expect("meta");
            versions.insert(meta["version"].as_u64().expect("version"));
            if versions.contains(&2) && answered > 20 {
                break;
            }
        }
        (versions, answered)
    });
    // Retrain into the served directory, with another seed: a new version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = dir.path().join("seed.toml");
    std::fs::write(&config, format!("{SMALL}seed = 7\n")).expect("config");
    let data = w.root.join("data");
    let out = model.clone();
    tokio::task::spawn_blocking(move || {
        relgraph(&[
            "train",
            CHURN,
            "--data",
            path(&data),
            "--out",
            path(&out),
            "--config",
            path(&config),
        ])
    })
    .await
    .expect("retrain");
    let (versions, answered) = scoring.await.expect("scoring");
    assert!(
        versions.contains(&1) && versions.contains(&2),
        "{versions:?} after {answered}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn predict_against_a_server_writes_every_entity_once() {
    let w = world();
    let store = tempfile::tempdir().expect("store");
    let server = serve(&[("churn", &w.root.join("churn"))], store.path());
    let out = tempfile::tempdir().expect("out");
    let text = relgraph(&[
        "predict",
        "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID",
        "--server",
        &server.addr,
        "--token",
        TOKEN,
        "--model",
        "churn",
        "--parts",
        "3",
        "--out",
        path(out.path()),
    ]);
    assert!(text.contains("scored 1500 entities"), "{text}");
    let mut keys = Vec::new();
    for part in 0..3 {
        let file = std::fs::File::open(out.path().join(format!("part-{part:05}.parquet")))
            .expect("part file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            keys.extend(strings(&b, "customer_id"));
            assert!(floats(&b, "prob").iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((keys.len(), distinct.len()), (1500, 1500));
    // A question the model was not trained for is refused.
    let wrong = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args([
            "predict",
            "PREDICT SUM(ORDERS.PRICE, 0, 30, days) FOR EACH CUSTOMERS.CUSTOMER_ID",
            "--server",
            &server.addr,
            "--token",
            TOKEN,
            "--model",
            "churn",
            "--out",
            path(&out.path().join("wrong")),
        ])
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("something else"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}
