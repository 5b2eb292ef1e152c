//! The heterogeneous temporal graph of a database: every row a node of its table's type,
//! every foreign key two edge types (child→parent and its reverse), each a CSR whose
//! neighbor lists are sorted by the neighbor's time.

use arrow::array::{Array, TimestampSecondArray};
use rayon::prelude::*;
use relgraph_common::{Database, NO_ROW};

use crate::delta::Delta;

/// The time of a node of a static table (or with a NULL time): visible at every anchor.
pub const STATIC: i64 = i64::MIN;

/// One direction of one foreign key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeType {
    /// `orders.customer_id->customers` or `customers<-orders.customer_id`.
    pub name: String,
    /// Table of the nodes whose neighbors this lists.
    pub src: usize,
    /// Table of the neighbors.
    pub dst: usize,
}

/// Neighbor lists of one edge type: node `i`'s neighbors are
/// `neighbors[offsets[i]..offsets[i + 1]]`, oldest first, with their times.
#[derive(Clone, Debug, Default)]
pub struct Csr {
    pub offsets: Vec<u32>,
    pub neighbors: Vec<u32>,
    pub times: Vec<i64>,
}

impl Csr {
    /// Where `node`'s neighbors lie; empty for nodes added after the build.
    pub fn range(&self, node: u32) -> (usize, usize) {
        match self.offsets.get(node as usize + 1) {
            Some(&hi) => (self.offsets[node as usize] as usize, hi as usize),
            None => (0, 0),
        }
    }

    pub fn num_edges(&self) -> usize {
        self.neighbors.len()
    }

    /// Bytes held, for the bytes-per-edge figure.
    pub fn bytes(&self) -> usize {
        self.offsets.len() * 4 + self.neighbors.len() * 4 + self.times.len() * 8
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("edge type `{0}` has more than 4 billion edges, more than one CSR holds")]
    TooManyEdges(String),
    #[error("table `{0}` has more than 4 billion rows, more than node ids hold")]
    TooManyNodes(String),
    #[error("appending to `{table}`: {problem}")]
    Append { table: String, problem: String },
    #[error("stored neighbor lists of `{edge}`: {problem}")]
    Segment { edge: String, problem: String },
}

/// Some nodes' neighbor lists of one edge type, as a partition store keeps them: the
/// nodes, how many neighbors each has, and their neighbors one list after another, each
/// list oldest first. The neighbors' times are not kept: they are the neighbors' node
/// times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub nodes: Vec<u32>,
    pub degrees: Vec<u32>,
    pub neighbors: Vec<u32>,
}

impl Segment {
    /// Little-endian: the node count and the edge count (u64 each), then the nodes,
    /// degrees and neighbors (u32 each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * (2 * self.nodes.len() + self.neighbors.len()));
        out.extend_from_slice(&(self.nodes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.neighbors.len() as u64).to_le_bytes());
        for v in [&self.nodes, &self.degrees, &self.neighbors] {
            out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        out
    }

    /// What [`Segment::to_bytes`] wrote; None for bytes it cannot have written.
    pub fn from_bytes(bytes: &[u8]) -> Option<Segment> {
        let count = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at + 8)?;
            usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()
        };
        let (n, m) = (count(0)?, count(8)?);
        let words = n.checked_mul(2)?.checked_add(m)?;
        if bytes.len() != words.checked_mul(4)?.checked_add(16)? {
            return None;
        }
        let mut words = bytes[16..]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut take = |k: usize| words.by_ref().take(k).collect::<Vec<u32>>();
        let (nodes, degrees, neighbors) = (take(n), take(n), take(m));
        let total: u64 = degrees.iter().map(|&d| u64::from(d)).sum();
        (total == m as u64).then_some(Segment {
            nodes,
            degrees,
            neighbors,
        })
    }
}

/// The whole graph in memory.
#[derive(Clone, Debug)]
pub struct HeteroGraph {
    pub tables: Vec<String>,
    /// Per table, the time of each node ([`STATIC`] where none); empty for static tables.
    pub node_times: Vec<Vec<i64>>,
    pub num_nodes: Vec<usize>,
    pub edge_types: Vec<EdgeType>,
    pub csr: Vec<Csr>,
    /// Per edge type, edges of rows appended since the CSR was built.
    pub delta: Vec<Delta>,
}

fn times_of(db: &Database, table: usize) -> Vec<i64> {
    let t = &db.tables[table];
    let column = t.schema.time_column.as_ref().and_then(|c| t.column(c));
    match column.and_then(|c| c.as_any().downcast_ref::<TimestampSecondArray>()) {
        Some(ts) => (0..ts.len())
            .map(|i| if ts.is_valid(i) { ts.value(i) } else { STATIC })
            .collect(),
        None => Vec::new(),
    }
}

fn time_at(times: &[i64], node: usize) -> i64 {
    times.get(node).copied().unwrap_or(STATIC)
}

impl HeteroGraph {
    /// Builds the graph of a loaded database. Null and dangling foreign keys give no edge.
    pub fn from_database(db: &Database) -> Result<HeteroGraph, GraphError> {
        Self::from_database_where(db, |_, _| true)
    }

    /// The part of `db`'s graph one worker holds, built directly (never the whole): every
    /// node's time, but the neighbor lists of only the nodes `keep(table, node)` selects;
    /// the others are empty. Equal to `from_database(db)?.partition(keep)`.
    pub fn from_database_where(
        db: &Database,
        keep: impl Fn(usize, u32) -> bool + Sync,
    ) -> Result<HeteroGraph, GraphError> {
        for t in &db.tables {
            if t.num_rows() >= NO_ROW as usize {
                return Err(GraphError::TooManyNodes(t.name().to_string()));
            }
        }
        let node_times: Vec<Vec<i64>> = (0..db.tables.len()).map(|t| times_of(db, t)).collect();
        let mut edge_types = Vec::new();
        let mut csr = Vec::new();
        for (c, table) in db.tables.iter().enumerate() {
            let order = time_order(&node_times[c], table.num_rows());
            for fk in &table.schema.foreign_keys {
                let (Some(column), Some(p)) = (
                    table.schema.column_index(&fk.column),
                    db.tables.iter().position(|t| t.name() == fk.references),
                ) else {
                    continue;
                };
                let parents = db.parent_rows(c, column, p);
                let name = format!("{}.{}", table.name(), fk.column);
                let forward = EdgeType {
                    name: format!("{name}->{}", fk.references),
                    src: c,
                    dst: p,
                };
                let reverse = EdgeType {
                    name: format!("{}<-{name}", fk.references),
                    src: p,
                    dst: c,
                };
                csr.push(child_to_parent(&parents, &node_times[p], |n| keep(c, n)));
                csr.push(parent_to_children(
                    &parents,
                    &order,
                    &node_times[c],
                    db.tables[p].num_rows(),
                    &reverse.name,
                    |n| keep(p, n),
                )?);
                edge_types.push(forward);
                edge_types.push(reverse);
            }
        }
        Ok(HeteroGraph {
            tables: db.tables.iter().map(|t| t.name().to_string()).collect(),
            num_nodes: db.tables.iter().map(|t| t.num_rows()).collect(),
            node_times,
            delta: edge_types.iter().map(|_| Delta::default()).collect(),
            edge_types,
            csr,
        })
    }

    /// Edge type `edge`'s neighbor lists of `nodes`, as built (appended edges left out).
    pub fn segment(&self, edge: usize, nodes: &[u32]) -> Segment {
        let csr = &self.csr[edge];
        let mut out = Segment {
            nodes: nodes.to_vec(),
            ..Segment::default()
        };
        for &n in nodes {
            let (lo, hi) = csr.range(n);
            out.degrees.push((hi - lo) as u32);
            out.neighbors.extend_from_slice(&csr.neighbors[lo..hi]);
        }
        out
    }

    /// The graph holding the neighbor lists in `segments` (per edge type of
    /// `edge_types`, any number each, no node in two of them): a worker's part as its
    /// store keeps it. `node_times` and `num_nodes` are the whole graph's, as
    /// [`HeteroGraph::from_database`] gives them; a neighbor's time is its node time.
    pub fn from_segments(
        tables: Vec<String>,
        (num_nodes, node_times): (Vec<usize>, Vec<Vec<i64>>),
        edge_types: Vec<EdgeType>,
        segments: &[Vec<Segment>],
    ) -> Result<HeteroGraph, GraphError> {
        let csr = edge_types
            .par_iter()
            .zip(segments)
            .map(|(e, parts)| csr_of(e, &num_nodes, &node_times, parts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HeteroGraph {
            tables,
            num_nodes,
            node_times,
            delta: edge_types.iter().map(|_| Delta::default()).collect(),
            edge_types,
            csr,
        })
    }

    pub fn num_edges(&self) -> usize {
        self.csr.iter().map(Csr::num_edges).sum::<usize>()
            + self.delta.iter().map(Delta::num_edges).sum::<usize>()
    }

    /// Bytes of all CSRs and deltas per directed edge.
    pub fn bytes_per_edge(&self) -> f64 {
        let bytes = self.csr.iter().map(Csr::bytes).sum::<usize>()
            + self.delta.iter().map(Delta::bytes).sum::<usize>();
        bytes as f64 / self.num_edges().max(1) as f64
    }

    pub fn node_time(&self, table: usize, node: u32) -> i64 {
        time_at(&self.node_times[table], node as usize)
    }

    /// The part of the graph one worker holds: every node's time (8 bytes a row), but the
    /// neighbor lists of only the nodes `keep(table, node)` selects; the others are empty,
    /// so sampling them here finds nothing and must go to their owner. Appended edges are
    /// folded in first.
    pub fn partition(
        &self,
        keep: impl Fn(usize, u32) -> bool + Sync,
    ) -> Result<HeteroGraph, GraphError> {
        if self.delta.iter().any(|d| !d.is_empty()) {
            let mut whole = self.clone();
            whole.compact()?;
            return whole.partition(keep);
        }
        let csr = self
            .csr
            .par_iter()
            .zip(&self.edge_types)
            .map(|(csr, et)| {
                let nodes = csr.offsets.len().saturating_sub(1);
                let mut out = Csr {
                    offsets: Vec::with_capacity(nodes + 1),
                    ..Csr::default()
                };
                out.offsets.push(0);
                for node in 0..nodes as u32 {
                    if keep(et.src, node) {
                        let (lo, hi) = csr.range(node);
                        out.neighbors.extend_from_slice(&csr.neighbors[lo..hi]);
                        out.times.extend_from_slice(&csr.times[lo..hi]);
                    }
                    out.offsets.push(out.neighbors.len() as u32);
                }
                out
            })
            .collect();
        Ok(HeteroGraph {
            tables: self.tables.clone(),
            node_times: self.node_times.clone(),
            num_nodes: self.num_nodes.clone(),
            edge_types: self.edge_types.clone(),
            delta: self.delta.clone(),
            csr,
        })
    }
}

/// Rows of a table ordered by time (static rows first), ties by row.
fn time_order(times: &[i64], rows: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..rows as u32).collect();
    if !times.is_empty() {
        order.par_sort_unstable_by_key(|&r| (times[r as usize], r));
    }
    order
}

/// Each kept child's one parent (none where the key is null or dangles).
/// Edge type `e`'s CSR from the neighbor lists of `parts`, checked against the graph's
/// node counts.
fn csr_of(
    e: &EdgeType,
    num_nodes: &[usize],
    node_times: &[Vec<i64>],
    parts: &[Segment],
) -> Result<Csr, GraphError> {
    let bad = |problem: String| GraphError::Segment {
        edge: e.name.clone(),
        problem,
    };
    let (sources, targets) = (num_nodes[e.src], num_nodes[e.dst]);
    let mut counts = vec![0u32; sources + 1];
    for s in parts {
        if s.degrees.len() != s.nodes.len() {
            return Err(bad("a degree per node is missing".into()));
        }
        for (&n, &d) in s.nodes.iter().zip(&s.degrees) {
            let slot = counts
                .get_mut(n as usize + 1)
                .ok_or_else(|| bad(format!("node {n} of {sources}")))?;
            if *slot != 0 {
                return Err(bad(format!("node {n} listed twice")));
            }
            *slot = d;
        }
    }
    let mut total: u64 = 0;
    for c in counts.iter_mut() {
        total += u64::from(*c);
        *c = u32::try_from(total).map_err(|_| GraphError::TooManyEdges(e.name.clone()))?;
    }
    let mut neighbors = vec![0u32; total as usize];
    for s in parts {
        let mut from = 0usize;
        for (&n, &d) in s.nodes.iter().zip(&s.degrees) {
            let at = counts[n as usize] as usize;
            let list = s
                .neighbors
                .get(from..from + d as usize)
                .ok_or_else(|| bad("fewer neighbors than the degrees say".into()))?;
            neighbors[at..at + d as usize].copy_from_slice(list);
            from += d as usize;
        }
    }
    if let Some(n) = neighbors.iter().find(|&&n| n as usize >= targets) {
        return Err(bad(format!("neighbor {n} of {targets}")));
    }
    let times = neighbors
        .par_iter()
        .map(|&n| time_at(&node_times[e.dst], n as usize))
        .collect();
    Ok(Csr {
        offsets: counts,
        neighbors,
        times,
    })
}

fn child_to_parent(parents: &[u32], parent_times: &[i64], keep: impl Fn(u32) -> bool) -> Csr {
    let mut offsets = Vec::with_capacity(parents.len() + 1);
    offsets.push(0u32);
    let mut neighbors = Vec::new();
    for (child, &p) in parents.iter().enumerate() {
        if p != NO_ROW && keep(child as u32) {
            neighbors.push(p);
        }
        offsets.push(neighbors.len() as u32);
    }
    let times = neighbors
        .par_iter()
        .map(|&p| time_at(parent_times, p as usize))
        .collect();
    Csr {
        offsets,
        neighbors,
        times,
    }
}

/// Each kept parent's children, oldest first: a counting sort over the children in time
/// order.
fn parent_to_children(
    parents: &[u32],
    order: &[u32],
    child_times: &[i64],
    num_parents: usize,
    name: &str,
    keep: impl Fn(u32) -> bool,
) -> Result<Csr, GraphError> {
    let kept: Vec<bool> = (0..num_parents as u32).map(keep).collect();
    let mut counts = vec![0u32; num_parents + 1];
    for &p in parents {
        if p != NO_ROW && kept[p as usize] {
            counts[p as usize + 1] += 1;
        }
    }
    let mut total: u64 = 0;
    for c in counts.iter_mut() {
        total += u64::from(*c);
        *c = u32::try_from(total).map_err(|_| GraphError::TooManyEdges(name.to_string()))?;
    }
    let offsets = counts;
    let mut cursor: Vec<u32> = offsets[..num_parents].to_vec();
    let edges = total as usize;
    let (mut neighbors, mut times) = (vec![0u32; edges], vec![0i64; edges]);
    for &child in order {
        let p = parents[child as usize];
        if p != NO_ROW && kept[p as usize] {
            let at = cursor[p as usize] as usize;
            neighbors[at] = child;
            times[at] = time_at(child_times, child as usize);
            cursor[p as usize] += 1;
        }
    }
    Ok(Csr {
        offsets,
        neighbors,
        times,
    })
}
