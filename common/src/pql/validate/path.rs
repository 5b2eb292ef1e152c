//! Foreign-key paths from an aggregated table up to the entity table (PQL.md §8).

use super::Binder;
use crate::pql::ast::*;
use crate::pql::bound::*;
use crate::pql::error::{PqlError, Span};

/// Longest foreign-key path searched when a multi-hop aggregation names none.
const MAX_HOPS: usize = 4;

impl Binder<'_> {
    /// The foreign keys from `fact` up to the entity table: the path written (`a->b.c`),
    /// else the unique shortest one.
    pub(super) fn path(
        &mut self,
        fact: usize,
        written: &[Ident],
        span: Span,
    ) -> Result<Vec<Link>, PqlError> {
        if fact == self.entity {
            return Err(PqlError::new(
                span,
                format!(
                    "aggregate a table linked to `{}`, not `{}` itself",
                    self.table(fact).name,
                    self.table(fact).name
                ),
            ));
        }
        if written.len() > 1 {
            return self.written_path(written);
        }
        let mut found: Vec<Vec<Link>> = Vec::new();
        self.search(fact, &mut vec![], &mut found);
        let Some(shortest) = found.iter().map(Vec::len).min() else {
            return Err(PqlError::new(
                span,
                format!(
                    "`{}` is not linked to `{}` by foreign keys",
                    self.table(fact).name,
                    self.table(self.entity).name
                ),
            )
            .with_hint("declare the link with foreign_keys in schema.toml"));
        };
        found.retain(|p| p.len() == shortest);
        let tables = |p: &Vec<Link>| p.iter().map(|l| l.child).collect::<Vec<_>>();
        if found.iter().any(|p| tables(p) != tables(&found[0])) {
            let shown: Vec<String> = found.iter().map(|p| self.show_path(p)).collect();
            let example: Vec<&str> = found[0]
                .iter()
                .rev()
                .map(|l| self.table(l.child).name.as_str())
                .collect();
            return Err(PqlError::new(
                span,
                format!(
                    "`{}` reaches `{}` by several paths: {}",
                    self.table(fact).name,
                    self.table(self.entity).name,
                    shown.join(", ")
                ),
            )
            .with_hint(format!("write the path, e.g. `{}.*`", example.join("->"))));
        }
        self.note_choice(&found);
        Ok(found.swap_remove(0))
    }

    pub(super) fn note_choice(&mut self, found: &[Vec<Link>]) {
        if found.len() > 1 {
            let chosen = self.show_path(&found[0]);
            let others: Vec<String> = found[1..].iter().map(|p| self.show_path(p)).collect();
            let note = format!(
                "linked through {chosen} (the first foreign key); also possible: {}",
                others.join(", ")
            );
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
    }

    pub(super) fn show_path(&self, path: &[Link]) -> String {
        let steps: Vec<String> = path
            .iter()
            .map(|l| {
                format!(
                    "{}.{}",
                    self.table(l.child).name,
                    self.table(l.child).columns[l.column].name
                )
            })
            .collect();
        format!("{} -> {}", steps.join(" -> "), self.table(self.entity).name)
    }

    pub(super) fn links(&self, child: usize, parent: usize) -> Vec<Link> {
        let t = self.table(child);
        t.foreign_keys
            .iter()
            .filter(|f| self.schema.tables[parent].name == f.references)
            .filter_map(|f| {
                t.column_index(&f.column).map(|column| Link {
                    child,
                    column,
                    parent,
                })
            })
            .collect()
    }

    /// All simple paths from `at` up to the entity table, at most `MAX_HOPS` long.
    pub(super) fn search(&self, at: usize, path: &mut Vec<Link>, found: &mut Vec<Vec<Link>>) {
        if path.len() >= MAX_HOPS {
            return;
        }
        for parent in 0..self.schema.tables.len() {
            if path.iter().any(|l| l.child == parent) || parent == at {
                continue;
            }
            for link in self.links(at, parent) {
                path.push(link);
                if parent == self.entity {
                    found.push(path.clone());
                } else {
                    self.search(parent, path, found);
                }
                path.pop();
            }
        }
    }

    /// `orders->order_items`: entity <- orders <- order_items (the entity may lead).
    pub(super) fn written_path(&mut self, written: &[Ident]) -> Result<Vec<Link>, PqlError> {
        let mut tables = vec![self.entity];
        for ident in written {
            let t = self.resolve_table(ident)?;
            if tables.len() == 1 && t == self.entity {
                continue;
            }
            tables.push(t);
        }
        let mut path = Vec::new();
        for pair in tables.windows(2).rev() {
            let (parent, child) = (pair[0], pair[1]);
            let links = self.links(child, parent);
            let Some(first) = links.first().copied() else {
                let ident = written
                    .iter()
                    .find(|i| self.resolve_table(i).ok() == Some(child))
                    .unwrap_or(&written[0]);
                return Err(PqlError::new(
                    ident.span,
                    format!(
                        "`{}` has no foreign key to `{}`",
                        self.table(child).name,
                        self.table(parent).name
                    ),
                ));
            };
            if links.len() > 1 {
                let names: Vec<&str> = links
                    .iter()
                    .map(|l| self.table(child).columns[l.column].name.as_str())
                    .collect();
                self.notes.push(format!(
                    "`{}` links to `{}` through {}; using `{}` (the first)",
                    self.table(child).name,
                    self.table(parent).name,
                    names.join(", "),
                    names[0]
                ));
            }
            path.push(first);
        }
        Ok(path)
    }
}
