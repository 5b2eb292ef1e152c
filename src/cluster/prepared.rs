//! A data-parallel job's part as its worker's store keeps it across attempts
//! (ARCHITECTURE.md §3): beside each partition's rows, the time-sorted neighbor lists of
//! the partition's nodes, and what the job derived from all rows (the encoders, every
//! entity's labels, the tables' time ranges the planner reads, the node times, each row's
//! partition, the past values the baselines read). Every attempt trains from the store:
//! one whose store lacks a partition placed on it first loads the data directory and
//! writes what is missing; one whose store holds them all reads nothing else.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use rayon::prelude::*;
use relgraph_common::pql::{self, PlanOptions, TaskPlan};
use relgraph_common::{Database, DatabaseSchema, arrow_schema};
use relgraph_proto::cluster::Job;
use relgraph_sampler::{EdgeType, HeteroGraph, Segment};
use relgraph_worker::label::Labels;
use relgraph_worker::model::features::{OwnedFeatures, TableCode};
use relgraph_worker::model::{PastValues, Rows};
use relgraph_worker::store::{self, PartitionStore};
use serde::{Deserialize, Serialize};

use super::labels;

/// What a job derived from all rows, small enough for JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Meta {
    /// What it was derived for: the job's query, training config (TOML), anchor step
    /// and partition count.
    pub query: String,
    pub config: String,
    pub anchor_step: Vec<String>,
    pub parts: u32,
    /// The graph's tables, their row counts and its edge types (name, source, target).
    pub tables: Vec<String>,
    pub num_nodes: Vec<usize>,
    pub edge_types: Vec<(String, usize, usize)>,
    /// Per table, its smallest and largest time, and whether the entity table has times
    /// (what planning reads of the rows).
    pub ranges: Vec<Option<(i64, i64)>>,
    pub entity_timed: bool,
    pub codes: Vec<TableCode>,
    pub rows: Rows,
    pub past: PastValues,
}

/// A worker's part of a job as read back from its store.
#[derive(Debug)]
pub struct Part {
    pub schema: DatabaseSchema,
    /// The neighbor lists of its partitions' nodes.
    pub graph: HeteroGraph,
    /// Its partitions' rows, encoded.
    pub features: OwnedFeatures,
}

/// Everything a job's store keeps beyond each partition's rows and neighbor lists.
#[derive(Debug)]
pub struct Derived {
    pub meta: Meta,
    /// Every entity's labels, merged, ASSUMING read.
    pub labels: Labels,
    /// Per table, each row's time ([`HeteroGraph::node_times`]).
    pub node_times: Vec<Vec<i64>>,
    /// Per table, each row's partition.
    pub placed: Vec<Vec<u32>>,
}

const META: &str = "meta";
const LABELS: &str = "labels";
const TIMES: &str = "node_times";
const PLACED: &str = "placement";

impl Derived {
    /// What `job` derived from all rows of `db` (planned as `plan`): its labels and
    /// encoders, the node times and edge types of `graph` (any part of `db`'s graph),
    /// and each row's partition of `parts`, `placed`.
    pub fn of(
        job: &Job,
        (db, plan): (&Database, &TaskPlan),
        (labels, codes): (Labels, Vec<TableCode>),
        graph: HeteroGraph,
        (placed, parts): (Vec<Vec<u32>>, u32),
    ) -> Result<Derived> {
        let meta = Meta {
            query: job.query.clone(),
            config: job.config_toml.clone(),
            anchor_step: job.anchor_step.clone(),
            parts,
            tables: graph.tables,
            num_nodes: graph.num_nodes,
            edge_types: graph
                .edge_types
                .iter()
                .map(|e| (e.name.clone(), e.src, e.dst))
                .collect(),
            ranges: pql::plan::time_ranges(db),
            entity_timed: db.tables[plan.task.entity_table]
                .schema
                .time_column
                .is_some(),
            codes,
            rows: Rows::of(db, plan),
            past: PastValues::of(db, plan, &labels)?,
        };
        Ok(Derived {
            meta,
            labels,
            node_times: graph.node_times,
            placed,
        })
    }

    /// Writes it to `store`; the meta last, so that a store holding it holds the rest.
    pub fn save(&self, store: &PartitionStore) -> Result<()> {
        let batch = labels::encode(&self.labels, false).map_err(anyhow::Error::msg)?;
        store.put_derived(LABELS, &store::encode(&batch)?)?;
        store.put_derived(
            TIMES,
            &columns_to_bytes(&self.node_times, |t| t.to_le_bytes()),
        )?;
        store.put_derived(PLACED, &columns_to_bytes(&self.placed, |p| p.to_le_bytes()))?;
        store.put_derived(META, &serde_json::to_vec(&self.meta)?)?;
        Ok(store.sync()?)
    }

    /// What [`Derived::save`] wrote for `job` over `parts` partitions (None if it wrote
    /// nothing, or for another query, config or partition count).
    pub fn load(store: &PartitionStore, job: &Job, parts: u32) -> Result<Option<Derived>> {
        let Some(meta) = store.derived(META)? else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_slice(&meta).context("the job store's meta")?;
        if (&meta.query, &meta.config, &meta.anchor_step, meta.parts)
            != (&job.query, &job.config_toml, &job.anchor_step, parts)
        {
            return Ok(None);
        }
        let read = |name: &str| -> Result<Vec<u8>> {
            store
                .derived(name)?
                .with_context(|| format!("the job store has its meta but not its {name}"))
        };
        let batch = store::decode(&read(LABELS)?)?;
        let (labels, _) = labels::decode(&[batch]).map_err(anyhow::Error::msg)?;
        let times = read(TIMES)?;
        let node_times = columns_from_bytes(&times, i64::from_le_bytes)
            .context("the job store's node times are damaged")?;
        let placed = read(PLACED)?;
        let placed = columns_from_bytes(&placed, u32::from_le_bytes)
            .context("the job store's placement is damaged")?;
        let n = &meta.num_nodes;
        let times_fit = node_times.len() == n.len()
            && node_times
                .iter()
                .zip(n)
                .all(|(c, &k)| c.is_empty() || c.len() == k);
        let placed_fit = placed.len() == n.len()
            && placed.iter().zip(n).all(|(c, &k)| c.len() == k)
            && placed.iter().flatten().all(|&p| p < parts);
        if !times_fit || !placed_fit {
            bail!("the job store's node times or placement do not match its tables");
        }
        Ok(Some(Derived {
            meta,
            labels,
            node_times,
            placed,
        }))
    }

    /// The job's plan, from the stored schema and time ranges.
    pub fn plan(&self, schema: &DatabaseSchema, options: &PlanOptions) -> Result<TaskPlan> {
        let task = pql::compile(&self.meta.query, schema)
            .map_err(|e| anyhow::anyhow!("{}", e.render(&self.meta.query)))?;
        pql::plan::plan_over(task, &self.meta.ranges, self.meta.entity_timed, options)
            .context("cannot plan the query")
    }

    /// This worker's part, partitions `owned`, read back from `store`.
    pub fn part(&self, store: &PartitionStore, owned: &[u32]) -> Result<Part> {
        let schema = store.schema()?.context("the job store holds no schema")?;
        let graph = self.graph(store, owned)?;
        let features = self.features(store, &schema, owned)?;
        Ok(Part {
            schema,
            graph,
            features,
        })
    }

    /// The part of the graph in partitions `owned`, from their stored neighbor lists.
    fn graph(&self, store: &PartitionStore, owned: &[u32]) -> Result<HeteroGraph> {
        let segments = (0..self.meta.edge_types.len() as u32)
            .into_par_iter()
            .map(|e| {
                owned
                    .iter()
                    .map(|&p| {
                        let bytes = store.adjacency(p, e)?.with_context(|| {
                            format!("the job store lacks partition {p}'s neighbor lists")
                        })?;
                        Segment::from_bytes(&bytes).with_context(|| {
                            format!("partition {p}'s stored neighbor lists are damaged")
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let edge_types = self
            .meta
            .edge_types
            .iter()
            .map(|(name, src, dst)| EdgeType {
                name: name.clone(),
                src: *src,
                dst: *dst,
            })
            .collect();
        let shape = (self.meta.num_nodes.clone(), self.node_times.clone());
        Ok(HeteroGraph::from_segments(
            self.meta.tables.clone(),
            shape,
            edge_types,
            &segments,
        )?)
    }

    /// The rows of partitions `owned`, encoded, read back from the store: for each table
    /// exactly the rows the placement puts there.
    fn features(
        &self,
        store: &PartitionStore,
        schema: &DatabaseSchema,
        owned: &[u32],
    ) -> Result<OwnedFeatures> {
        let mut wanted = vec![false; self.meta.parts as usize];
        for &p in owned {
            wanted[p as usize] = true;
        }
        // Each table read back and checked on its own thread.
        let one = |(t, code): (usize, &TableCode)| -> Result<(Vec<u32>, RecordBatch)> {
            let table = schema
                .tables
                .iter()
                .find(|s| s.name == code.table)
                .with_context(|| format!("no table `{}` in the stored schema", code.table))?;
            let (ids, batch) = match store.rows_with_ids_in(&code.table, owned)? {
                Some(found) => found,
                None => (
                    Vec::new(),
                    RecordBatch::new_empty(Arc::new(arrow_schema(table))),
                ),
            };
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            let placed: Vec<u32> = (0..self.placed[t].len() as u32)
                .filter(|&r| wanted[self.placed[t][r as usize] as usize])
                .collect();
            if sorted != placed {
                bail!(
                    "the partition store holds {} rows of `{}`, but {} are placed on this worker",
                    sorted.len(),
                    code.table,
                    placed.len()
                );
            }
            Ok((ids, batch))
        };
        let held = self
            .meta
            .codes
            .par_iter()
            .enumerate()
            .map(one)
            .collect::<Result<Vec<_>>>()?;
        Ok(OwnedFeatures::from_rows(&self.meta.codes, held)?)
    }
}

/// Writes the neighbor lists of partitions `missing` (of `parts`; `placed` gives each
/// row's) to `store`, building only their part of `db`'s graph. Returns the part, for
/// the job's node times and edge types.
pub fn link(
    store: &PartitionStore,
    db: &Database,
    placed: &[Vec<u32>],
    missing: &[u32],
    parts: u32,
) -> Result<HeteroGraph> {
    let mut wanted = vec![false; parts as usize];
    for &p in missing {
        wanted[p as usize] = true;
    }
    let graph =
        HeteroGraph::from_database_where(db, |t, n| wanted[placed[t][n as usize] as usize])?;
    let nodes = store::rows_by_partition(placed, parts);
    missing.par_iter().try_for_each(|&p| {
        let segments: Vec<Vec<u8>> = graph
            .edge_types
            .iter()
            .enumerate()
            .map(|(e, et)| graph.segment(e, &nodes[et.src][p as usize]).to_bytes())
            .collect();
        store.put_adjacency(parts, p, &segments)
    })?;
    store.sync()?;
    Ok(graph)
}

/// Columns of fixed-width values: per column its length (u64), then its values.
fn columns_to_bytes<T: Copy, const N: usize>(
    cols: &[Vec<T>],
    le: impl Fn(T) -> [u8; N],
) -> Vec<u8> {
    let mut out = (cols.len() as u64).to_le_bytes().to_vec();
    for c in cols {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend(c.iter().flat_map(|&x| le(x)));
    }
    out
}

/// What [`columns_to_bytes`] wrote (None for bytes it cannot have written).
fn columns_from_bytes<T, const N: usize>(
    bytes: &[u8],
    value: impl Fn([u8; N]) -> T,
) -> Option<Vec<Vec<T>>> {
    let length = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)).ok()
    };
    let cols = length(0)?;
    let mut at = 8;
    let mut out = Vec::new();
    for _ in 0..cols {
        let n = length(at)?;
        at += 8;
        let end = at.checked_add(n.checked_mul(N)?)?;
        let body = bytes.get(at..end)?;
        let values = body.chunks_exact(N).map(|b| b.try_into().ok().map(&value));
        out.push(values.collect::<Option<Vec<T>>>()?);
        at = end;
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pql::{label_all, plan_query};
    use relgraph_worker::model::{TrainConfig, fit_codes};
    use relgraph_worker::store::placement;

    const CHURN: &str = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0";

    #[test]
    fn a_part_read_back_from_the_store_is_the_part_built_from_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        crate::generate::retail_for_test(&data, 9, [150, 20, 200]);
        let db = Database::load(&data, None).expect("load");
        let options = PlanOptions::default();
        let plan = plan_query(&db, CHURN, &options).expect("plan");
        let config = TrainConfig::default();
        let labels = label_all(&db, &plan, config.assuming).expect("labels");
        let codes = fit_codes(&db, &plan, &config).expect("codes");
        let parts = 6;
        let placed = placement(&db, parts);
        // This worker trains on partitions 1 and 4 and keeps 2 as a replica.
        let (owned, keep) = ([1, 4], [1, 2, 4]);
        let store = PartitionStore::open(&dir.path().join("store")).expect("open");
        store
            .ingest_placed(&db, &placed, &keep, parts)
            .expect("ingest");
        let graph = link(&store, &db, &placed, &keep, parts).expect("link");
        assert_eq!(store.linked(parts).expect("linked"), keep);
        let job = Job {
            query: CHURN.into(),
            config_toml: "epochs = 1\n".into(),
            ..Job::default()
        };
        let derived = Derived::of(
            &job,
            (&db, &plan),
            (labels, codes.clone()),
            graph,
            (placed.clone(), parts),
        )
        .expect("derived");
        derived.save(&store).expect("save");
        drop(derived);

        let back = Derived::load(&store, &job, parts)
            .expect("load")
            .expect("stored");
        let schema = store.schema().expect("schema").expect("stored schema");
        assert_eq!(back.plan(&schema, &options).expect("plan"), plan);
        let want = label_all(&db, &plan, config.assuming).expect("labels");
        assert_eq!(
            (&back.labels.entities, &back.labels.anchors),
            (&want.entities, &want.anchors)
        );
        assert_eq!(
            (&back.labels.splits, &back.labels.labels),
            (&want.splits, &want.labels)
        );
        assert_eq!(back.meta.codes, codes);
        assert_eq!(back.placed, placed);

        let mine = |t: usize, n: u32| owned.contains(&placed[t][n as usize]);
        let direct = HeteroGraph::from_database_where(&db, mine).expect("graph");
        let part = back.part(&store, &owned).expect("part");
        let stored = &part.graph;
        assert_eq!(stored.node_times, direct.node_times);
        assert_eq!(stored.num_edges(), direct.num_edges());
        assert!(stored.num_edges() > 0);
        for (a, b) in stored.csr.iter().zip(&direct.csr) {
            assert_eq!(
                (&a.offsets, &a.neighbors, &a.times),
                (&b.offsets, &b.neighbors, &b.times)
            );
        }
        let direct = OwnedFeatures::encode(&db, &codes, mine).expect("encode");
        let pairs = part.features.tables.iter().zip(&direct.tables);
        for ((rows, got), (want_rows, want)) in pairs {
            assert_eq!(rows, want_rows);
            assert_eq!((&got.dense, &got.ids), (&want.dense, &want.ids));
        }

        // Another query, config or partition count: nothing kept for it.
        let other = Job {
            query: CHURN.replace("30", "20"),
            ..job.clone()
        };
        assert!(
            Derived::load(&store, &other, parts)
                .expect("load")
                .is_none()
        );
        assert!(Derived::load(&store, &job, 12).expect("load").is_none());
        // A damaged neighbor list or blob is an error that says which, not a panic.
        store
            .put_adjacency(parts, 4, &vec![vec![1, 2, 3]; stored.edge_types.len()])
            .expect("damage");
        let err = back.part(&store, &owned).expect_err("damaged lists");
        assert!(format!("{err:#}").contains("partition 4"), "{err:#}");
        store.put_derived(TIMES, &[1, 2, 3]).expect("put");
        let err = Derived::load(&store, &job, parts).expect_err("damaged");
        assert!(format!("{err:#}").contains("node times"), "{err:#}");
    }

    #[test]
    fn columns_round_trip_and_damage_is_caught() {
        let cols = vec![vec![1i64, -2, 3], Vec::new(), vec![i64::MIN]];
        let bytes = columns_to_bytes(&cols, i64::to_le_bytes);
        assert_eq!(columns_from_bytes(&bytes, i64::from_le_bytes), Some(cols));
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            assert_eq!(columns_from_bytes(&bytes[..cut], i64::from_le_bytes), None);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(columns_from_bytes(&longer, i64::from_le_bytes), None);
    }
}
