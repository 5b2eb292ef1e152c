//! Every CUDA kernel compiles with NVRTC for sm_80 (A100) and sm_90 (H100), on any
//! machine with libnvrtc (`./dev.sh test` installs NVIDIA's wheel and puts its lib
//! folder on LD_LIBRARY_PATH); a broken kernel comes back with NVRTC's log. Without
//! libnvrtc the test says so rather than passing silently.

#![cfg(feature = "cuda")]

use relgraph_kernels::cuda::{self, CudaError};
use relgraph_kernels::launch::KERNELS;

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !cuda::nvrtc_present() {
        println!("skipped: no libnvrtc");
        eprintln!("skipped: no libnvrtc (every_kernel_compiles_for_sm80_and_sm90)");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let ptx = cuda::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(ptx.contains(&format!(".target {arch}")), "{arch}");
        for kernel in KERNELS {
            let name = kernel.name;
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{name} missing for {arch}"
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let first = cuda::compile_cached("sm_80", dir.path()).expect("compile");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    assert_eq!(
        cuda::compile_cached("sm_80", dir.path()).expect("cached"),
        first
    );
}

#[test]
fn a_broken_kernel_comes_back_with_the_compiler_log() {
    if !cuda::nvrtc_present() {
        println!("skipped: no libnvrtc");
        eprintln!("skipped: no libnvrtc (a_broken_kernel_comes_back_with_the_compiler_log)");
        return;
    }
    let broken = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    match cuda::compile_source(broken, "sm_80") {
        Err(CudaError::Compile { log, .. }) => assert!(log.contains("undefined_name"), "{log}"),
        other => panic!("expected a compile error, got {other:?}"),
    }
}
