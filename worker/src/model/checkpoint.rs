//! The saved model: a directory with two files.
//!
//! - `model.json`, the [`Manifest`]: `"format": "relgraph-model"`, `"version": 1`, the
//!   query, every hyper-parameter, the column encoders fitted on the data, the target
//!   code (class names, item keys, regression scaling), the split anchors, the tables and
//!   edge types the network was built for, each parameter's name and shape, the
//!   checksum of `params.bin`, and the training report.
//! - `params.bin`: the parameters in manifest order, little-endian: the magic
//!   `RGPARAMS`, a u32 version (1), a u32 count, then per parameter u64 rows, u64 cols
//!   and rows x cols f32 values, row-major. Its FNV-1a 64 hash is the manifest's
//!   `checksum`.
//!
//! Files are written beside their final names and renamed, so a crash never leaves a
//! half-written model; loading checks format, version, checksum and every shape.

use std::io::Write;
use std::path::Path;

use relgraph_common::pql::Splits;
use relgraph_kernels::{Params, Tensor};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::features::TableCode;
use super::net::{Head, Net};
use super::task::TargetCode;
use super::trainer::{Backend, Model, ModelError, Prepared};

pub const FORMAT: &str = "relgraph-model";
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"RGPARAMS";

/// The anchors of the splits the model was trained and evaluated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoredSplits {
    Temporal {
        train: Vec<i64>,
        val: i64,
        test: i64,
    },
    Static {
        anchor: i64,
        by_time: bool,
    },
}

impl StoredSplits {
    pub fn of(splits: &Splits) -> Option<Self> {
        match splits {
            Splits::Temporal { train, val, test } => Some(StoredSplits::Temporal {
                train: train.clone(),
                val: *val,
                test: *test,
            }),
            Splits::Static { anchor, by_time } => Some(StoredSplits::Static {
                anchor: *anchor,
                by_time: *by_time,
            }),
            Splits::Given(_) => None,
        }
    }

    pub fn splits(&self) -> Splits {
        match self {
            StoredSplits::Temporal { train, val, test } => Splits::Temporal {
                train: train.clone(),
                val: *val,
                test: *test,
            },
            StoredSplits::Static { anchor, by_time } => Splits::Static {
                anchor: *anchor,
                by_time: *by_time,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamShape {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub query: String,
    pub task: String,
    pub entity_table: String,
    pub tables: Vec<String>,
    pub edge_types: Vec<String>,
    pub config: TrainConfig,
    pub codes: Vec<TableCode>,
    pub target: TargetCode,
    pub splits: StoredSplits,
    /// Counterfactual ASSUMING: the head takes the assumption's truth value as an input.
    #[serde(default)]
    pub treatment: bool,
    #[serde(default)]
    pub params: Vec<ParamShape>,
    #[serde(default)]
    pub checksum: String,
    #[serde(default)]
    pub report: serde_json::Value,
}

fn fnv(bytes: &[u8]) -> String {
    let h = relgraph_common::hash::fnv1a(bytes.iter().copied(), relgraph_common::hash::FNV_BASIS);
    format!("{h:016x}")
}

fn io(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// Writes `path` through `write` into a temporary file renamed into place, so that a
/// reader never finds half of it.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), ModelError> {
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut out = std::io::BufWriter::new(file);
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| io(&tmp, e))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

impl Manifest {
    /// The network this manifest describes, over `data`'s graph, with fresh parameters.
    pub fn net(&self, backend: &Backend, params: &mut Params<Backend>, data: &Prepared) -> Net {
        let table = |name: &str| {
            data.graph
                .tables
                .iter()
                .position(|t| t == name)
                .unwrap_or(0)
        };
        let head = match &self.target {
            TargetCode::Ranking {
                table: t, items, ..
            } => Head::Ranking {
                items: items.len(),
                table: table(t),
            },
            code => Head::Linear {
                outputs: code.outputs(),
                treatment: self.treatment,
            },
        };
        let names: Vec<String> = data
            .graph
            .edge_types
            .iter()
            .map(|e| e.name.clone())
            .collect();
        Net::new(
            backend,
            params,
            &self.codes,
            &names,
            &data.endpoints,
            table(&self.entity_table),
            head,
            &self.config,
        )
    }

    /// Checks that `data` has the tables and edge types the network was built for.
    pub fn check(&self, data: &Prepared) -> Result<(), ModelError> {
        let edges: Vec<&str> = data
            .graph
            .edge_types
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        if data.graph.tables != self.tables {
            return Err(ModelError::Mismatch(format!(
                "the model has tables [{}], the data [{}]",
                self.tables.join(", "),
                data.graph.tables.join(", ")
            )));
        }
        if edges != self.edge_types {
            return Err(ModelError::Mismatch(format!(
                "the model has links [{}], the data [{}]",
                self.edge_types.join(", "),
                edges.join(", ")
            )));
        }
        Ok(())
    }
}

/// Writes `model` (parameters first, then the manifest naming their checksum).
pub fn save(model: &Model, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(model.params.values.len() as u32).to_le_bytes());
    let mut shapes = Vec::new();
    for (name, t) in model.params.names.iter().zip(&model.params.values) {
        bytes.extend_from_slice(&(t.rows as u64).to_le_bytes());
        bytes.extend_from_slice(&(t.cols as u64).to_le_bytes());
        for v in t.to_host(&model.backend) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        shapes.push(ParamShape {
            name: name.clone(),
            rows: t.rows,
            cols: t.cols,
        });
    }
    let mut manifest = model.manifest.clone();
    manifest.params = shapes;
    manifest.checksum = fnv(&bytes);
    write_atomic(&dir.join("params.bin"), &bytes)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| io(dir, e))?;
    write_atomic(&dir.join("model.json"), &json)
}

/// Reads a model's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ModelError> {
    let path = dir.join("model.json");
    let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| io(&path, e))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(io(
            &path,
            format!(
                "format {} version {}; this relgraph reads {FORMAT} version {VERSION}",
                manifest.format, manifest.version
            ),
        ));
    }
    Ok(manifest)
}

/// Loads the model in `dir` for `data`, mapping its items to the data's item rows.
pub fn load(dir: &Path, data: &Prepared, item_rows: Vec<u32>) -> Result<Model, ModelError> {
    let manifest = read_manifest(dir)?;
    manifest.check(data)?;
    let path = dir.join("params.bin");
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    if fnv(&bytes) != manifest.checksum {
        return Err(io(
            &path,
            "checksum mismatch: the file is damaged or from another model",
        ));
    }
    let mut model = super::trainer::init(manifest, data, item_rows);
    let mut at = 16usize;
    let short = || io(&path, "ends early");
    if bytes.len() < at || &bytes[..8] != MAGIC {
        return Err(io(&path, "not a relgraph parameter file"));
    }
    let backend = &model.backend;
    for (t, shape) in model.params.values.iter_mut().zip(&model.manifest.params) {
        let word = |at: usize| -> Result<u64, ModelError> {
            let b = bytes.get(at..at + 8).ok_or_else(short)?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| short())?))
        };
        let (rows, cols) = (word(at)? as usize, word(at + 8)? as usize);
        if (rows, cols) != (t.rows, t.cols) || (rows, cols) != (shape.rows, shape.cols) {
            return Err(io(
                &path,
                format!(
                    "parameter `{}` is {rows} x {cols}, the network needs {} x {}",
                    shape.name, t.rows, t.cols
                ),
            ));
        }
        at += 16;
        let raw = bytes.get(at..at + rows * cols * 4).ok_or_else(short)?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        *t = Tensor::from_host(backend, rows, cols, &values);
        at += rows * cols * 4;
    }
    if model.params.values.len() != model.manifest.params.len() || at != bytes.len() {
        return Err(io(&path, "parameter count differs from the manifest"));
    }
    Ok(model)
}

const STATE_MAGIC: &[u8; 8] = b"RGSTATE1";

#[derive(Deserialize)]
struct StateFile {
    state: super::trainer::TrainState,
    checksum: String,
}

/// What [`StateFile`] reads, written from a borrowed state (its parameters are not
/// serialized, and need not be copied).
#[derive(Serialize)]
struct StateFileOut<'a> {
    state: &'a super::trainer::TrainState,
    checksum: String,
}

/// Bytes on their way to a file, hashed as they go.
struct Hashed<W: Write> {
    out: W,
    hash: u64,
}

impl<W: Write> Hashed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash = relgraph_common::hash::fnv1a(bytes.iter().copied(), self.hash);
        self.out.write_all(bytes)
    }

    /// A length-prefixed block of f32, little-endian.
    fn block(&mut self, values: &[f32]) -> std::io::Result<()> {
        self.put(&(values.len() as u64).to_le_bytes())?;
        for chunk in values.chunks(16_384) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.put(&bytes)?;
        }
        Ok(())
    }
}

/// Writes a training state (`train_state.json` + `train_state.bin`: for each parameter
/// its current values, best values, and Adam moments, as f32 little-endian blocks),
/// streaming the blocks to the file rather than copying them first.
pub fn save_train_state(state: &super::trainer::TrainState, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut hash = relgraph_common::hash::FNV_BASIS;
    write_atomic_with(&dir.join("train_state.bin"), |out| {
        let mut w = Hashed { out, hash };
        w.put(STATE_MAGIC)?;
        for (i, p) in state.params.iter().enumerate() {
            w.block(p)?;
            w.block(state.best.get(i).map_or(&[][..], Vec::as_slice))?;
            let (m, v) = &state.moments[i];
            w.block(m)?;
            w.block(v)?;
        }
        hash = w.hash;
        Ok(())
    })?;
    let file = StateFileOut {
        state,
        checksum: format!("{hash:016x}"),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| io(dir, e))?;
    write_atomic(&dir.join("train_state.json"), &json)
}

/// Reads what [`save_train_state`] wrote, checking its checksum.
pub fn load_train_state(dir: &Path) -> Result<super::trainer::TrainState, ModelError> {
    let path = dir.join("train_state.json");
    let json = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let file: StateFile = serde_json::from_slice(&json).map_err(|e| io(&path, e))?;
    let path = dir.join("train_state.bin");
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    if fnv(&bytes) != file.checksum || bytes.get(..8) != Some(&STATE_MAGIC[..]) {
        return Err(io(
            &path,
            "checksum mismatch: the file is damaged or from another run",
        ));
    }
    let mut at = 8usize;
    let mut state = file.state;
    while at < bytes.len() {
        let mut block = || f32_block(&bytes, &mut at).ok_or_else(|| io(&path, "ends early"));
        let (params, best, m, v) = (block()?, block()?, block()?, block()?);
        state.params.push(params);
        if state.best_value.is_some() {
            state.best.push(best);
        }
        state.moments.push((m, v));
    }
    Ok(state)
}

/// A length-prefixed block of f32 at `at`, moving `at` past it.
fn f32_block(bytes: &[u8], at: &mut usize) -> Option<Vec<f32>> {
    let n = u64::from_le_bytes(bytes.get(*at..*at + 8)?.try_into().ok()?) as usize;
    let body = bytes.get(*at + 8..(*at + 8).checked_add(n.checked_mul(4)?)?)?;
    *at += 8 + 4 * n;
    Some(
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}
