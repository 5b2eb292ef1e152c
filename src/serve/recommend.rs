//! Recommendations: the serving model's item index (its item embeddings, searched by
//! [`ItemSearch`]) and the path along which an entity already has items.

use relgraph_common::Database;
use relgraph_common::pql::TaskPlan;
use relgraph_common::pql::bound::{BoundExpr, Target};
use relgraph_sampler::{GraphView, HeteroGraph, Request, Strategy};
use relgraph_worker::model::metrics::Ranked;
use relgraph_worker::model::{Inputs, Model, Output};
use rustc_hash::{FxHashMap, FxHashSet};

use super::topk::ItemSearch;
use super::{ServeError, invalid};

#[derive(Debug)]
pub(super) struct Ranking {
    /// Embedding id by item table row.
    index: FxHashMap<u32, u32>,
    pub(super) search: ItemSearch,
    /// Edge types from the entity down to the target's facts, then up to the items.
    seen: Option<(Vec<usize>, usize)>,
}

/// A ranking model's index for serving: its item embeddings, and the path along which
/// an entity is linked to items it already has.
pub(super) fn ranking_of(
    model: &Model,
    plan: &TaskPlan,
    db: &Database,
    graph: &HeteroGraph,
) -> Option<Ranking> {
    let emb = model.net.item_embeddings(&model.params)?;
    let host = emb.to_host(&model.backend);
    let index = model.item_index();
    let live = model
        .item_rows
        .iter()
        .enumerate()
        .filter(|(_, r)| **r != u32::MAX)
        .map(|(i, _)| i as u32);
    let search = ItemSearch::new(emb.cols, &host, live);
    Some(Ranking {
        index,
        search,
        seen: seen_path(plan, db, graph),
    })
}

/// Edge types from the entity down the target's path to its fact table, and from there
/// to the item table.
fn seen_path(plan: &TaskPlan, db: &Database, graph: &HeteroGraph) -> Option<(Vec<usize>, usize)> {
    let name = |t: usize, c: usize| db.tables[t].schema.columns[c].name.as_str();
    let Target::Items(i) = plan.task.target else {
        return None;
    };
    let agg = &plan.task.aggregates[i];
    let Some(BoundExpr::Column(item_column, _)) = &agg.arg else {
        return None;
    };
    let forward = |child: usize, parent: usize, column: Option<&str>| {
        (0..graph.edge_types.len()).step_by(2).find(|&e| {
            let et = &graph.edge_types[e];
            et.src == child
                && et.dst == parent
                && column.is_none_or(|c| {
                    et.name
                        .starts_with(&format!("{}.{c}->", graph.tables[child]))
                })
        })
    };
    let mut down = Vec::new();
    for link in agg.path.iter().rev() {
        down.push(forward(link.child, link.parent, Some(name(link.child, link.column)))? + 1);
    }
    let column = name(item_column.table, item_column.column);
    let up = (0..graph.edge_types.len()).step_by(2).find(|&e| {
        graph.edge_types[e].src == agg.table
            && graph.edge_types[e]
                .name
                .starts_with(&format!("{}.{column}->", graph.tables[agg.table]))
    })?;
    Some((down, up))
}

/// The items `row` is linked to at `anchor` along `path`.
fn seen_items(
    graph: &HeteroGraph,
    path: &(Vec<usize>, usize),
    row: u32,
    anchor: i64,
) -> FxHashSet<u32> {
    let mut frontier = vec![row];
    let mut found = Vec::new();
    let all = |nodes: &[u32]| -> Vec<Request> {
        nodes
            .iter()
            .map(|&node| Request {
                node,
                anchor,
                k: u32::MAX,
                rng: 0,
            })
            .collect()
    };
    for &e in path.0.iter().chain(std::iter::once(&path.1)) {
        found.clear();
        GraphView::sample(graph, e, &all(&frontier), Strategy::Recent, &mut found);
        frontier = found.iter().map(|n| n.node).collect();
    }
    frontier.into_iter().collect()
}

/// Top-k recommendations: the query vector against every item embedding, with the
/// exact scores of the items inside each entity's subgraph in place of their dot
/// products.
#[allow(clippy::too_many_arguments)]
pub(super) fn recommend(
    model: &Model,
    ranking: &Ranking,
    graph: &HeteroGraph,
    inputs: Inputs<'_>,
    rows: &[u32],
    anchor: i64,
    fanouts: &[u32],
    k: usize,
    exclude_seen: bool,
) -> Result<Output, ServeError> {
    let anchors = vec![anchor; rows.len()];
    let parts = model.rank_parts(inputs, rows, &anchors, Some(fanouts), &ranking.index)?;
    let (mut ranked, mut scores) = (Vec::new(), Vec::new());
    for (s, &row) in rows.iter().enumerate() {
        let q = &parts.queries[s * parts.channels..(s + 1) * parts.channels];
        let inside = &parts.inside[s];
        let seen: FxHashSet<u32> = match (&ranking.seen, exclude_seen) {
            (Some(path), true) => seen_items(graph, path, row, anchor)
                .into_iter()
                .filter_map(|r| ranking.index.get(&r).copied())
                .collect(),
            (None, true) => {
                return Err(invalid(
                    "exclude_seen: this model's target has no path from entity to items",
                ));
            }
            _ => FxHashSet::default(),
        };
        let is_inside = |i: u32| inside.binary_search_by_key(&i, |&(x, _)| x).is_ok();
        let mut top = ranking
            .search
            .top_k(q, k, &|i| is_inside(i) || seen.contains(&i));
        top.extend(
            inside
                .iter()
                .filter(|(i, _)| !seen.contains(i))
                .map(|&(i, s)| (s, i)),
        );
        top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        top.truncate(k);
        ranked.push(Ranked {
            top: top.iter().map(|t| t.1).collect(),
            first_relevant: None,
        });
        scores.push(top.iter().map(|t| f64::from(t.0)).collect());
    }
    Ok(Output::Ranked(ranked, scores))
}
