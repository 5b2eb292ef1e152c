//! TLS for every gRPC and Flight connection of a process, when configured (rustls through
//! tonic). A process with a certificate and key serves TLS on all its ports (Raft, admin,
//! the workers' data plane, Flight serving, the router); a process with a CA certificate
//! connects to every peer over TLS and trusts the servers that CA signed. Without either,
//! connections are plain HTTP/2, as before. The bearer token works the same over both.
//!
//! One setting per process ([`configure`]), read by [`server`] and [`endpoint`], so
//! every server and client the process starts follows it.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The PEM files of a process's TLS setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain and private key (for its servers).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA that signed the servers this process connects to.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files named by `RELGRAPH_TLS_CERT`, `RELGRAPH_TLS_KEY` and `RELGRAPH_TLS_CA`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var_os(name).map(PathBuf::from);
        TlsFiles {
            cert: var("RELGRAPH_TLS_CERT"),
            key: var("RELGRAPH_TLS_KEY"),
            ca: var("RELGRAPH_TLS_CA"),
        }
    }

    /// A coordinator's or worker's config keys (`tls_cert`, `tls_key`, `tls_ca`), the
    /// environment's files where a key is not given.
    pub fn of_node(
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
    ) -> TlsFiles {
        let given = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        given.or(TlsFiles::from_env())
    }

    /// These files where given, else `other`'s.
    pub fn or(self, other: TlsFiles) -> TlsFiles {
        TlsFiles {
            cert: self.cert.or(other.cert),
            key: self.key.or(other.key),
            ca: self.ca.or(other.ca),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {what} {path}: {problem}")]
    File {
        what: &'static str,
        path: String,
        problem: String,
    },
    #[error("TLS: a certificate needs its key and a key its certificate (tls_cert and tls_key)")]
    Half,
    #[error("TLS is already configured in this process with other files")]
    Reconfigured,
}

struct Tls {
    files: TlsFiles,
    server: Option<ServerTlsConfig>,
    client: Option<ClientTlsConfig>,
}

static TLS: RwLock<Option<Tls>> = RwLock::new(None);

fn current<T>(f: impl FnOnce(Option<&Tls>) -> T) -> T {
    let tls = TLS.read().unwrap_or_else(|e| e.into_inner());
    f(tls.as_ref())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::File {
            what,
            path: path.display().to_string(),
            problem: "not a PEM file".into(),
        });
    }
    Ok(bytes)
}

/// Sets this process's TLS from `files` (empty: none). Call before starting any server
/// or connection; once set, a later call must name the same files (or none).
pub fn configure(files: TlsFiles) -> Result<(), TlsError> {
    if files.is_empty() {
        return Ok(());
    }
    if let Some(same) = current(|t| t.map(|t| t.files == files)) {
        return if same {
            Ok(())
        } else {
            Err(TlsError::Reconfigured)
        };
    }
    let server = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some(ServerTlsConfig::new().identity(Identity::from_pem(
            read("certificate", cert)?,
            read("key", key)?,
        ))),
        (None, None) => None,
        _ => return Err(TlsError::Half),
    };
    let client = match &files.ca {
        Some(ca) => Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)),
        ),
        None => None,
    };
    let mut tls = TLS.write().unwrap_or_else(|e| e.into_inner());
    match &*tls {
        Some(set) if set.files != files => Err(TlsError::Reconfigured),
        Some(_) => Ok(()),
        None => {
            *tls = Some(Tls {
                files,
                server,
                client,
            });
            Ok(())
        }
    }
}

/// A server builder, serving TLS when this process has a certificate.
pub fn server() -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder();
    match current(|t| t.and_then(|t| t.server.clone())) {
        Some(config) => builder.tls_config(config),
        None => Ok(builder),
    }
}

/// An endpoint for `addr` (`host:port`): `https` trusting the configured CA when this
/// process has one, else plain `http`.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let client = current(|t| t.and_then(|t| t.client.clone()));
    let scheme = if client.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    match client {
        Some(config) => endpoint.tls_config(config),
        None => Ok(endpoint),
    }
}
