//! How the CUDA kernels (`src/cuda/kernels.cu`) split their work over a launch grid,
//! written once more here so that the index arithmetic can be checked without a GPU:
//! the tests run every scheme over simulated grids and check that each element (or
//! segment and column) is visited exactly once and no index leaves its buffer. The CUDA
//! source follows these functions line for line; [`KERNELS`] names every kernel with its
//! scheme, and a test checks the list against the source.

/// Threads per block for the grid-stride and warp-per-segment schemes.
pub const THREADS: u32 = 256;
/// Threads per warp.
pub const WARP: u32 = 32;
/// The most blocks a grid-stride launch asks for: beyond it threads loop.
pub const MAX_BLOCKS: u32 = 65_535;

/// A launch: blocks of `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: u32,
    pub threads: u32,
}

/// How a kernel splits its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Element `i < n` by a grid-stride loop ([`grid_stride`], [`stride_indices`]).
    GridStride,
    /// One warp per CSR segment, lanes over columns ([`warp_grid`], [`warp_work`]).
    WarpPerSegment,
    /// One block per row, threads over its columns, shared-memory reductions
    /// ([`row_grid`]); checked by NVRTC only (shared memory is not simulated).
    BlockPerRow,
}

/// A kernel parameter as the source declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `const float*`
    F32s,
    /// `float*`
    F32sMut,
    /// `const unsigned*`
    U32s,
    /// `const int*`
    I32s,
    /// `int*`
    I32sMut,
    /// `long long`
    I64,
    /// `int`
    I32,
    /// `float`
    F32,
    /// `double`
    F64,
    /// `unsigned long long`
    U64,
}

impl Param {
    /// The parameter a C declaration (type and name) declares, if it is one of these.
    pub fn parse(declaration: &str) -> Option<Param> {
        let words: Vec<&str> = declaration.split_whitespace().collect();
        let (name, ty) = words.split_last()?;
        let pointer = name.starts_with('*') || ty.last().is_some_and(|t| t.ends_with('*'));
        let ty = ty.join(" ").trim_end_matches('*').to_string();
        Some(match (ty.as_str(), pointer) {
            ("const float", true) => Param::F32s,
            ("float", true) => Param::F32sMut,
            ("const unsigned", true) => Param::U32s,
            ("const int", true) => Param::I32s,
            ("int", true) => Param::I32sMut,
            ("long long", false) => Param::I64,
            ("int", false) => Param::I32,
            ("float", false) => Param::F32,
            ("double", false) => Param::F64,
            ("unsigned long long", false) => Param::U64,
            _ => return None,
        })
    }
}

/// A kernel of `kernels.cu`: its name, launch scheme and parameters. A launch passes
/// exactly these, which the CUDA backend checks before anything reaches the driver.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub scheme: Scheme,
    pub params: &'static [Param],
}

/// Every kernel of `kernels.cu`, in source order.
pub const KERNELS: &[Kernel] = {
    use Param::*;
    &[
        Kernel {
            name: "gather_rows",
            scheme: Scheme::GridStride,
            params: &[F32s, U32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "scatter_add_rows",
            scheme: Scheme::GridStride,
            params: &[F32s, U32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "segment_reduce",
            scheme: Scheme::WarpPerSegment,
            params: &[F32s, U32s, U32s, F32sMut, I32sMut, I64, I64, I32],
        },
        Kernel {
            name: "segment_reduce_backward",
            scheme: Scheme::WarpPerSegment,
            params: &[F32s, U32s, U32s, I32s, F32sMut, I64, I64, I32],
        },
        Kernel {
            name: "activation",
            scheme: Scheme::GridStride,
            params: &[F32s, F32sMut, I64, I32],
        },
        Kernel {
            name: "activation_backward",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, I64, I32],
        },
        Kernel {
            name: "mul",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, I64],
        },
        Kernel {
            name: "add_bias",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "axpy",
            scheme: Scheme::GridStride,
            params: &[F32s, F32sMut, I64, F32],
        },
        Kernel {
            name: "sum_rows",
            scheme: Scheme::GridStride,
            params: &[F32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "dropout_mask",
            scheme: Scheme::GridStride,
            params: &[F32sMut, I64, F64, F32, U64],
        },
        Kernel {
            name: "time_encoding",
            scheme: Scheme::GridStride,
            params: &[F32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "time_encoding_backward",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, I64, I64],
        },
        Kernel {
            name: "layer_norm",
            scheme: Scheme::BlockPerRow,
            params: &[F32s, F32s, F32s, F32sMut, F32sMut, I64, I64, F32],
        },
        Kernel {
            name: "layer_norm_backward",
            scheme: Scheme::BlockPerRow,
            params: &[F32s, F32s, F32s, F32s, F32sMut, F32sMut, F32sMut, I64, I64],
        },
        Kernel {
            name: "bce_with_logits",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, F32sMut, I64],
        },
        Kernel {
            name: "regression_loss",
            scheme: Scheme::GridStride,
            params: &[F32s, F32s, F32sMut, F32sMut, I64, I32, F32],
        },
        Kernel {
            name: "softmax_cross_entropy",
            scheme: Scheme::BlockPerRow,
            params: &[F32s, F32s, F32sMut, F32sMut, I64, I64],
        },
        Kernel {
            name: "adam",
            scheme: Scheme::GridStride,
            params: &[
                F32sMut, F32s, F32sMut, F32sMut, I64, F32, F32, F32, F32, F32, F32, F32,
            ],
        },
        Kernel {
            name: "adam_sparse",
            scheme: Scheme::GridStride,
            params: &[
                F32sMut, F32s, U32s, F32sMut, F32sMut, I64, I64, F32, F32, F32, F32, F32, F32, F32,
            ],
        },
    ]
};

/// The position in [`KERNELS`] of the kernel named `name`.
pub fn kernel(name: &str) -> Option<usize> {
    KERNELS.iter().position(|k| k.name == name)
}

/// The grid of a grid-stride launch over `n` elements (at least one block).
pub fn grid_stride(n: u64) -> Grid {
    let blocks = n
        .div_ceil(u64::from(THREADS))
        .clamp(1, u64::from(MAX_BLOCKS));
    Grid {
        blocks: blocks as u32,
        threads: THREADS,
    }
}

/// The elements thread `thread` of block `block` visits: `block * threads + thread`,
/// then steps of `blocks * threads`, below `n` (`stride_start` / `stride_step` in the
/// source).
pub fn stride_indices(grid: Grid, block: u32, thread: u32, n: u64) -> impl Iterator<Item = u64> {
    let start = u64::from(block) * u64::from(grid.threads) + u64::from(thread);
    let step = u64::from(grid.blocks) * u64::from(grid.threads);
    (start..n).step_by(step as usize)
}

/// Element `i` of a `rows x cols` matrix as (row, column): `r = i / cols`,
/// `c = i - r * cols`.
pub fn row_col(i: u64, cols: u64) -> (u64, u64) {
    let r = i / cols;
    (r, i - r * cols)
}

/// The grid of a warp-per-segment launch over `segments` segments.
pub fn warp_grid(segments: u64) -> Grid {
    let per_block = u64::from(THREADS / WARP);
    Grid {
        blocks: segments.div_ceil(per_block).max(1) as u32,
        threads: THREADS,
    }
}

/// What thread `thread` of block `block` does in a warp-per-segment launch: its segment
/// (`None` past the last) and the columns its lane handles.
pub fn warp_work(
    grid: Grid,
    block: u32,
    thread: u32,
    segments: u64,
    cols: u64,
) -> Option<(u64, impl Iterator<Item = u64>)> {
    let global = u64::from(block) * u64::from(grid.threads) + u64::from(thread);
    let warp = global / u64::from(WARP);
    let lane = u64::from(thread % WARP);
    (warp < segments).then(|| (warp, (lane..cols).step_by(WARP as usize)))
}

/// The grid of a block-per-row launch: one block per row, threads a power of two up to
/// [`THREADS`], no more than the columns need; shared memory is one f32 per thread.
pub fn row_grid(rows: u64, cols: u64) -> (Grid, usize) {
    let threads = cols.next_power_of_two().clamp(WARP as u64, THREADS as u64) as u32;
    (
        Grid {
            blocks: rows.max(1) as u32,
            threads,
        },
        threads as usize * size_of::<f32>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes with tails: fewer elements than a block, not a multiple of a block or a
    /// warp, and more than the largest grid covers in one pass.
    const SHAPES: &[(u64, u64)] = &[
        (1, 1),
        (3, 5),
        (7, 33),
        (100, 64),
        (257, 3),
        (1000, 128),
        (MAX_BLOCKS as u64 * THREADS as u64 / 3 + 11, 5),
    ];

    fn simulate_stride(n: u64) -> Vec<u32> {
        let grid = grid_stride(n);
        assert!(grid.blocks >= 1 && grid.blocks <= MAX_BLOCKS && grid.threads <= 1024);
        let mut seen = vec![0u32; n as usize];
        for block in 0..grid.blocks {
            for thread in 0..grid.threads {
                for i in stride_indices(grid, block, thread, n) {
                    seen[i as usize] += 1;
                }
            }
        }
        seen
    }

    #[test]
    fn grid_stride_visits_every_element_once() {
        for &(rows, cols) in SHAPES {
            let n = rows * cols;
            let seen = simulate_stride(n);
            assert!(seen.iter().all(|&s| s == 1), "{rows} x {cols}");
            for i in [0, n / 2, n - 1] {
                let (r, c) = row_col(i, cols);
                assert!(r < rows && c < cols && r * cols + c == i);
            }
        }
        assert!(simulate_stride(0).is_empty());
    }

    /// gather_rows and scatter_add_rows: each output (input) element is read (written)
    /// once, at an index inside the source (destination) matrix.
    #[test]
    fn row_gathers_and_scatters_stay_in_bounds() {
        let (rows, cols, source_rows) = (300u64, 7u64, 40u64);
        let idx: Vec<u64> = (0..rows).map(|r| (r * 13 + 5) % source_rows).collect();
        let grid = grid_stride(rows * cols);
        let mut reads = vec![0u32; (source_rows * cols) as usize];
        for block in 0..grid.blocks {
            for thread in 0..grid.threads {
                for i in stride_indices(grid, block, thread, rows * cols) {
                    let (r, c) = row_col(i, cols);
                    let j = idx[r as usize] * cols + c;
                    assert!(j < source_rows * cols);
                    reads[j as usize] += 1;
                }
            }
        }
        // Every source row named by idx, every column, as often as idx names it.
        for s in 0..source_rows {
            let named = idx.iter().filter(|&&i| i == s).count() as u32;
            for c in 0..cols {
                assert_eq!(reads[(s * cols + c) as usize], named);
            }
        }
    }

    #[test]
    fn warp_per_segment_covers_each_segment_and_column_once() {
        for &(segments, cols) in SHAPES.iter().take(6) {
            let grid = warp_grid(segments);
            let mut seen = vec![0u32; (segments * cols) as usize];
            for block in 0..grid.blocks {
                for thread in 0..grid.threads {
                    if let Some((s, columns)) = warp_work(grid, block, thread, segments, cols) {
                        for c in columns {
                            assert!(c < cols);
                            seen[(s * cols + c) as usize] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&x| x == 1), "{segments} x {cols}");
        }
    }

    /// The CSR loops of segment_reduce over a simulated warp launch give the CPU
    /// reference's sum, mean and max, empty segments included.
    #[test]
    fn simulated_segment_reduce_matches_a_reference() {
        let cols = 37u64;
        let offsets: Vec<u64> = vec![0, 3, 3, 10, 11, 40];
        let segments = offsets.len() as u64 - 1;
        let source_rows = 17u64;
        let idx: Vec<u64> = (0..40).map(|e| (e * 7 + 2) % source_rows).collect();
        let x: Vec<f32> = (0..source_rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 7.0)
            .collect();
        for reduce in 0..3 {
            let grid = warp_grid(segments);
            let mut out = vec![f32::NAN; (segments * cols) as usize];
            for block in 0..grid.blocks {
                for thread in 0..grid.threads {
                    let Some((s, columns)) = warp_work(grid, block, thread, segments, cols) else {
                        continue;
                    };
                    let (lo, hi) = (offsets[s as usize], offsets[s as usize + 1]);
                    for c in columns {
                        let mut acc = if reduce == 2 { f32::NEG_INFINITY } else { 0.0 };
                        for e in lo..hi {
                            let v = x[(idx[e as usize] * cols + c) as usize];
                            acc = if reduce == 2 { acc.max(v) } else { acc + v };
                        }
                        if hi == lo {
                            acc = 0.0;
                        }
                        if reduce == 1 && hi > lo {
                            acc /= (hi - lo) as f32;
                        }
                        out[(s * cols + c) as usize] = acc;
                    }
                }
            }
            for s in 0..segments as usize {
                let members: Vec<u64> = (offsets[s]..offsets[s + 1])
                    .map(|e| idx[e as usize])
                    .collect();
                for c in 0..cols {
                    let values: Vec<f32> = members
                        .iter()
                        .map(|&r| x[(r * cols + c) as usize])
                        .collect();
                    let want = match (reduce, values.is_empty()) {
                        (_, true) => 0.0,
                        (0, _) => values.iter().sum(),
                        (1, _) => values.iter().sum::<f32>() / values.len() as f32,
                        _ => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    };
                    let got = out[s * cols as usize + c as usize];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "reduce {reduce} segment {s}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_blocks_are_powers_of_two_within_limits() {
        for &(rows, cols) in SHAPES {
            let (grid, shared) = row_grid(rows, cols);
            assert!(grid.threads.is_power_of_two());
            assert!((WARP..=THREADS).contains(&grid.threads));
            assert_eq!(grid.blocks as u64, rows);
            assert_eq!(shared, grid.threads as usize * 4);
        }
    }

    #[test]
    fn every_kernel_is_listed_with_the_parameters_the_source_declares() {
        let source = include_str!("cuda/kernels.cu");
        let mut in_source = Vec::new();
        for rest in source.split("__global__ void ").skip(1) {
            let (name, rest) = rest.split_once('(').expect("a parameter list");
            let params: Vec<Param> = rest
                .split_once(')')
                .expect("a closed parameter list")
                .0
                .split(',')
                .map(|d| Param::parse(d).unwrap_or_else(|| panic!("{name}: parameter `{d}`")))
                .collect();
            in_source.push((name.to_string(), params));
        }
        let listed: Vec<(String, Vec<Param>)> = KERNELS
            .iter()
            .map(|k| (k.name.to_string(), k.params.to_vec()))
            .collect();
        assert_eq!(in_source, listed);
        assert!(kernel("gather_rows").is_some() && kernel("nothing").is_none());
    }

    #[test]
    fn declarations_parse_to_parameters() {
        assert_eq!(Param::parse("const float* x"), Some(Param::F32s));
        assert_eq!(Param::parse(" float *out"), Some(Param::F32sMut));
        assert_eq!(Param::parse("unsigned long long base"), Some(Param::U64));
        assert_eq!(Param::parse("long long n"), Some(Param::I64));
        assert_eq!(Param::parse("int act"), Some(Param::I32));
        assert_eq!(Param::parse("short s"), None);
    }
}
