//! The op suite every f32 backend runs: each op's forward and backward against the CPU
//! backend in f64 (whose backwards `gradients.rs` checks by finite differences), on
//! shapes with tails, empty segments and repeated ids. The CPU backend in f32 runs it
//! always; the CUDA backend runs it where a GPU exists and says "skipped: no GPU"
//! otherwise.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_kernels::{Activation, AdamConfig, Backend, Cpu, Index, Loss, Reduce, Tensor};

type R = Cpu<f64>;

/// A backend under test beside the reference.
struct Suite<'a, B: Backend<E = f32>> {
    b: &'a B,
    r: R,
    rng: Pcg64Mcg,
}

impl<B: Backend<E = f32>> Suite<'_, B> {
    fn values(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }

    /// The same values on both backends.
    fn pair(&self, rows: usize, cols: usize, v: &[f64]) -> (Tensor<B>, Tensor<R>) {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        (
            Tensor::from_host(self.b, rows, cols, &f),
            Tensor::from_host(&self.r, rows, cols, v),
        )
    }

    fn random(&mut self, rows: usize, cols: usize) -> (Tensor<B>, Tensor<R>) {
        let v = self.values(rows * cols, 1.0);
        self.pair(rows, cols, &v)
    }

    fn ids(&self, ids: &[u32]) -> (Index<B>, Index<R>) {
        (
            Index::from_host(self.b, ids),
            Index::from_host(&self.r, ids),
        )
    }

    fn same(&self, op: &str, got: &Tensor<B>, want: &Tensor<R>, tol: f64) {
        assert_eq!(got.shape(), want.shape(), "{op}: shape");
        let (g, w) = (got.to_host(self.b), want.to_host(&self.r));
        for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
            let err = (f64::from(g) - w).abs() / w.abs().max(1.0);
            assert!(err <= tol, "{op} on {}: [{i}] {g} vs {w}", self.b.name());
        }
    }

    /// Random CSR segments (a quarter empty) over ids into `rows`.
    fn segments(&mut self, count: usize, rows: usize) -> (Vec<u32>, Vec<u32>) {
        let mut offsets = vec![0u32];
        for _ in 0..count {
            let len = if self.rng.random_bool(0.25) {
                0
            } else {
                self.rng.random_range(1..9)
            };
            offsets.push(offsets[offsets.len() - 1] + len);
        }
        let ids = (0..offsets[count])
            .map(|_| self.rng.random_range(0..rows as u32))
            .collect();
        (ids, offsets)
    }

    /// Large uploads (staged through pinned memory on a GPU), one after another into
    /// the same staging buffer, arrive intact.
    fn uploads(&mut self) {
        let b = self.b;
        let mut sent = Vec::new();
        for round in 0..3 {
            let host: Vec<f32> = (0..300_000).map(|i| (i * 7 + round) as f32).collect();
            sent.push((Tensor::from_host(b, 1000, 300, &host), host));
        }
        for (t, host) in &sent {
            assert!(t.to_host(b) == *host, "upload on {}", b.name());
        }
    }

    fn dense(&mut self) {
        let (b, r) = (self.b, &self.r.clone());
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (m, k, n) = (37, 19, 70);
            let (a, ar) = self.random(if ta { k } else { m }, if ta { m } else { k });
            let (x, xr) = self.random(if tb { n } else { k }, if tb { k } else { n });
            let fresh = b.matmul(&a, ta, &x, tb);
            self.same(
                &format!("matmul {ta} {tb}"),
                &fresh,
                &r.matmul(&ar, ta, &xr, tb),
                1e-5,
            );
            for accumulate in [false, true] {
                let (mut o, mut or) = self.random(m, n);
                b.gemm(&a, ta, &x, tb, &mut o, accumulate);
                r.gemm(&ar, ta, &xr, tb, &mut or, accumulate);
                self.same(&format!("gemm {ta} {tb} {accumulate}"), &o, &or, 1e-5);
            }
        }
        let (mut x, mut xr) = self.random(300, 33);
        let (row, rowr) = self.random(1, 33);
        b.add_row(&mut x, &row);
        r.add_row(&mut xr, &rowr);
        self.same("add_row", &x, &xr, 1e-6);
        self.same("sum_rows", &b.sum_rows(&x), &r.sum_rows(&xr), 1e-5);
        let (y, yr) = self.random(300, 33);
        self.same("mul", &b.mul(&x, &y), &r.mul(&xr, &yr), 1e-6);
        self.same("add", &b.add(&x, &y), &r.add(&xr, &yr), 1e-6);
        b.axpy(0.5, &y, &mut x);
        r.axpy(0.5, &yr, &mut xr);
        self.same("axpy", &x, &xr, 1e-6);
        for act in [Activation::Relu, Activation::Gelu] {
            let out = b.activation(act, &x);
            self.same("activation", &out, &r.activation(act, &xr), 1e-5);
            let back = b.activation_backward(act, &x, &y);
            let want = r.activation_backward(act, &xr, &yr);
            self.same("activation backward", &back, &want, 1e-5);
        }
        for cols in [1, 7, 64, 300] {
            let (x, xr) = self.random(45, cols);
            let (g, gr) = self.random(1, cols);
            let (be, ber) = self.random(1, cols);
            let (y, stats) = b.layer_norm(&x, &g, &be, 1e-5);
            let (yr, statsr) = r.layer_norm(&xr, &gr, &ber, 1e-5);
            self.same("layer_norm", &y, &yr, 1e-4);
            self.same("layer_norm stats", &stats, &statsr, 1e-3);
            let (dy, dyr) = self.random(45, cols);
            let (dx, dg, db) = b.layer_norm_backward(&x, &g, &stats, &dy);
            let (dxr, dgr, dbr) = r.layer_norm_backward(&xr, &gr, &statsr, &dyr);
            self.same("layer_norm dx", &dx, &dxr, 1e-3);
            self.same("layer_norm dgamma", &dg, &dgr, 1e-4);
            self.same("layer_norm dbeta", &db, &dbr, 1e-5);
        }
        // The same seed gives the CPU's mask exactly.
        let mask = b.dropout_mask(41, 29, 0.3, 7);
        self.same("dropout", &mask, &r.dropout_mask(41, 29, 0.3, 7), 1e-6);
        let t = self.values(50, 1.0);
        let t: Vec<f64> = t.iter().map(|v| (v + 1.0) * 200.0).collect();
        let (t, tr) = self.pair(50, 1, &t);
        let enc = b.time_encoding(&t, 16);
        self.same("time_encoding", &enc, &r.time_encoding(&tr, 16), 1e-3);
        let (dy, dyr) = self.random(50, 16);
        let back = b.time_encoding_backward(&t, &dy);
        let want = r.time_encoding_backward(&tr, &dyr);
        self.same("time_encoding backward", &back, &want, 2e-2);
    }

    fn sparse(&mut self) {
        let (b, r) = (self.b, &self.r.clone());
        let (rows, cols) = (60, 37);
        let (x, xr) = self.random(rows, cols);
        let ids: Vec<u32> = (0..150)
            .map(|_| self.rng.random_range(0..rows as u32))
            .collect();
        let (idx, idxr) = self.ids(&ids);
        let gathered = b.gather_rows(&x, &idx);
        self.same("gather_rows", &gathered, &r.gather_rows(&xr, &idxr), 1e-7);
        let (dy, dyr) = self.random(150, cols);
        let scattered = b.scatter_add_rows(&dy, &idx, rows);
        self.same(
            "scatter_add_rows",
            &scattered,
            &r.scatter_add_rows(&dyr, &idxr, rows),
            1e-5,
        );
        let (perm, offsets) = b.group_by(&idx, rows);
        let (permr, offsetsr) = r.group_by(&idxr, rows);
        assert_eq!(perm.to_host(b), permr.to_host(r), "group_by");
        assert_eq!(offsets.to_host(b), offsetsr.to_host(r), "group_by");
        let (distinct, sums) = b.coalesce(&idx, &dy);
        let (distinctr, sumsr) = r.coalesce(&idxr, &dyr);
        assert_eq!(distinct.to_host(b), distinctr.to_host(r), "coalesce");
        self.same("coalesce", &sums, &sumsr, 1e-5);

        let (ids, offsets) = self.segments(90, rows);
        let (idx, idxr) = self.ids(&ids);
        let (off, offr) = self.ids(&offsets);
        let (dy, dyr) = self.random(90, cols);
        for reduce in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
            for through in [true, false] {
                // Without ids the segments read x's rows in order.
                let (x, xr) = if through {
                    self.random(rows, cols)
                } else {
                    self.random(ids.len(), cols)
                };
                let (i, ir) = if through {
                    (Some(&idx), Some(&idxr))
                } else {
                    (None, None)
                };
                let op = format!("gather_reduce {reduce:?} ids {through}");
                let (out, arg) = b.gather_reduce(&x, i, &off, reduce);
                let (outr, argr) = r.gather_reduce(&xr, ir, &offr, reduce);
                self.same(&op, &out, &outr, 1e-5);
                let (arg, argr) = (arg.map(|a| a.to_host(b)), argr.map(|a| a.to_host(r)));
                assert_eq!(arg, argr, "{op}: argmax");
                let (a, ar) = match (&arg, &argr) {
                    (Some(a), Some(_)) => {
                        let (a, ar) = self.ids(a);
                        (Some(a), Some(ar))
                    }
                    _ => (None, None),
                };
                let back = b.gather_reduce_backward(&dy, x.rows, i, &off, reduce, a.as_ref());
                let want = r.gather_reduce_backward(&dyr, x.rows, ir, &offr, reduce, ar.as_ref());
                self.same(&format!("{op} backward"), &back, &want, 1e-5);
            }
        }
    }

    fn losses(&mut self) {
        let (b, r) = (self.b, &self.r.clone());
        let (pred, predr) = self.random(70, 3);
        let t = self.values(210, 1.0);
        for loss in [
            Loss::BceWithLogits,
            Loss::L1,
            Loss::Huber { delta: 0.4 },
            Loss::Bpr,
        ] {
            let target: Vec<f64> = match loss {
                Loss::BceWithLogits => t.iter().map(|v| (v + 1.0) / 2.0).collect(),
                _ => t.clone(),
            };
            let (target, targetr) = self.pair(70, 3, &target);
            let (value, grad) = b.loss(loss, &pred, &target);
            let (valuer, gradr) = r.loss(loss, &predr, &targetr);
            assert!(
                (f64::from(value) - valuer).abs() < 1e-4,
                "{loss:?}: {value} vs {valuer}"
            );
            self.same(&format!("{loss:?} gradient"), &grad, &gradr, 1e-5);
        }
        let (logits, logitsr) = self.random(70, 9);
        let classes: Vec<f64> = (0..70).map(|i| f64::from(i * 7 % 9)).collect();
        let (classes, classesr) = self.pair(70, 1, &classes);
        let (value, grad) = b.loss(Loss::SoftmaxCrossEntropy, &logits, &classes);
        let (valuer, gradr) = r.loss(Loss::SoftmaxCrossEntropy, &logitsr, &classesr);
        assert!(
            (f64::from(value) - valuer).abs() < 1e-4,
            "softmax: {value} vs {valuer}"
        );
        self.same("softmax gradient", &grad, &gradr, 1e-5);
    }

    fn adam(&mut self) {
        let (b, r) = (self.b, &self.r.clone());
        let config = AdamConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..AdamConfig::default()
        };
        let (mut p, mut pr) = self.random(20, 13);
        let (mut m, mut mr) = self.random(20, 13);
        let v = self.values(20 * 13, 1.0);
        let v: Vec<f64> = v.iter().map(|x| x * x).collect();
        let (mut v, mut vr) = self.pair(20, 13, &v);
        for step in 1..4 {
            let (g, gr) = self.random(20, 13);
            b.adam(&config, step, &mut p, &mut m, &mut v, &g, None);
            r.adam(&config, step, &mut pr, &mut mr, &mut vr, &gr, None);
            let (g, gr) = self.random(3, 13);
            let (rows, rowsr) = self.ids(&[17, 2, 9]);
            b.adam(&config, step, &mut p, &mut m, &mut v, &g, Some(&rows));
            r.adam(&config, step, &mut pr, &mut mr, &mut vr, &gr, Some(&rowsr));
        }
        self.same("adam parameters", &p, &pr, 1e-4);
        self.same("adam first moments", &m, &mr, 1e-5);
        self.same("adam second moments", &v, &vr, 1e-5);
    }
}

/// Runs the whole suite on `b`.
fn suite<B: Backend<E = f32>>(b: &B) {
    let mut s = Suite {
        b,
        r: R::new(),
        rng: Pcg64Mcg::seed_from_u64(11),
    };
    s.uploads();
    s.dense();
    s.sparse();
    s.losses();
    s.adam();
    b.synchronize();
}

#[test]
fn cpu_f32_matches_the_f64_reference() {
    suite(&Cpu::<f32>::new());
}

#[test]
fn cuda_matches_the_f64_reference() {
    #[cfg(feature = "cuda")]
    match relgraph_kernels::cuda::Cuda::open(0) {
        Ok(cuda) => {
            println!("running the op suite on {}", cuda.name());
            suite(&cuda);
        }
        Err(e) => println!("skipped: no GPU ({e})"),
    }
    #[cfg(not(feature = "cuda"))]
    println!("skipped: no GPU (built without the cuda feature)");
}
