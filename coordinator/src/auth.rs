//! Bearer-token authentication for every gRPC call (ARCHITECTURE.md §10): clients attach
//! `authorization: Bearer <token>`; servers refuse anything else with `Unauthenticated`.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Adds the configured token to outgoing calls (nothing when none is configured).
#[derive(Clone, Debug, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    pub fn new(token: Option<&str>) -> Self {
        Auth(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Compares in time independent of where the first difference is.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server side: lets the call through when no token is configured or it carries it.
pub fn check_token(req: Request<()>, token: Option<&str>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(req);
    };
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(req),
        Some(_) => Err(Status::unauthenticated("invalid token")),
        None => Err(Status::unauthenticated(
            "this cluster requires a token (authorization: Bearer <token>)",
        )),
    }
}
