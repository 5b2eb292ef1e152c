//! `/metrics` in Prometheus text on every node: a process-wide recorder and a minimal
//! HTTP/1.1 responder (GET only), so no HTTP server stack is built.

use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder (once; later calls do nothing).
pub fn install() -> Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
    let _ = HANDLE.set(handle);
    Ok(())
}

pub fn render() -> String {
    record_memory();
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), where the
/// system tells them (Linux); absent elsewhere.
fn record_memory() {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    for line in status.lines() {
        let name = match line.split(':').next() {
            Some("VmRSS") => "relgraph_resident_bytes",
            Some("VmHWM") => "relgraph_peak_resident_bytes",
            _ => continue,
        };
        let kib = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(kib) = kib {
            metrics::gauge!(name).set(kib * 1024.0);
        }
    }
}

/// Serves `GET /metrics` on `addr`; returns the bound address.
pub async fn serve(addr: &str) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "only GET /metrics is served\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}
