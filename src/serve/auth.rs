//! Flight authentication (ARCHITECTURE.md §10): with a token configured, `Handshake`
//! takes it (as the password of HTTP Basic auth, as pyarrow's `authenticate_basic_token`
//! sends it, or as the payload) and answers a session token; every other call needs
//! `authorization: Bearer <session token>` (or the configured token itself, as workers
//! send each other) and gets `Unauthenticated` otherwise.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relgraph_coordinator::auth::same;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// How long a session token from `Handshake` stays valid.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// The configured token and the session tokens issued for it.
#[derive(Debug, Default)]
pub struct Sessions {
    token: Option<String>,
    issued: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    pub fn new(token: Option<String>) -> Self {
        Sessions {
            token,
            issued: Mutex::default(),
        }
    }

    /// Lets a call through when no token is configured, or it carries the token or a
    /// live session token.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(given) = given else {
            return Err(Status::unauthenticated(
                "this server requires a token: call Handshake with it and send authorization: Bearer <session token>",
            ));
        };
        if same(given.as_bytes(), token.as_bytes()) {
            return Ok(());
        }
        let mut issued = self
            .issued
            .lock()
            .map_err(|_| Status::internal("sessions"))?;
        let now = Instant::now();
        issued.retain(|_, until| *until > now);
        if issued.contains_key(given) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid or expired token"))
        }
    }

    /// A new session token for a client presenting `presented`.
    pub(super) fn open(&self, presented: Option<&[u8]>) -> Result<String, Status> {
        if let Some(token) = &self.token {
            match presented {
                Some(p) if same(p, token.as_bytes()) => {}
                Some(_) => return Err(Status::unauthenticated("invalid token")),
                None => {
                    return Err(Status::unauthenticated(
                        "Handshake needs the token: as the Basic auth password or as the payload",
                    ));
                }
            }
        }
        let session = random_token()?;
        let mut issued = self
            .issued
            .lock()
            .map_err(|_| Status::internal("sessions"))?;
        issued.insert(session.clone(), Instant::now() + SESSION);
        Ok(session)
    }
}

fn random_token() -> Result<String, Status> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Status::internal(format!("no randomness for a session token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The password of an `authorization: Basic base64(user:password)` header.
pub(super) fn basic_password(metadata: &MetadataMap) -> Option<Vec<u8>> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64_decode(encoded.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A handshake's answer stream.
pub type HandshakeStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<arrow_flight::HandshakeResponse, Status>> + Send>,
>;

/// Answers a Flight `Handshake`: the token as the Basic auth password (what pyarrow's
/// `authenticate_basic_token` sends) or as the first message's payload buys a session
/// token, returned as the payload and as an `authorization: Bearer` header.
pub async fn handshake(
    sessions: &Sessions,
    request: tonic::Request<tonic::Streaming<arrow_flight::HandshakeRequest>>,
) -> Result<tonic::Response<HandshakeStream>, Status> {
    let basic = basic_password(request.metadata());
    let first = request.into_inner().message().await?;
    let payload = first.map(|m| m.payload).filter(|p| !p.is_empty());
    let presented = basic.or_else(|| payload.map(|p| p.to_vec()));
    let session = sessions.open(presented.as_deref())?;
    let answer = arrow_flight::HandshakeResponse {
        protocol_version: 0,
        payload: session.clone().into_bytes().into(),
    };
    let mut response: tonic::Response<HandshakeStream> =
        tonic::Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
    let header = format!("Bearer {session}")
        .parse()
        .map_err(|_| Status::internal("session token"))?;
    response.metadata_mut().insert("authorization", header);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_passwords_decode() {
        let mut m = MetadataMap::new();
        // base64("relgraph:s3cret token")
        m.insert(
            "authorization",
            "Basic cmVsZ3JhcGg6czNjcmV0IHRva2Vu"
                .parse()
                .expect("header"),
        );
        assert_eq!(basic_password(&m).as_deref(), Some(&b"s3cret token"[..]));
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(base64_decode("Y!"), None);
    }

    #[test]
    fn sessions_need_the_token() {
        let s = Sessions::new(Some("t0k".into()));
        assert!(s.open(None).is_err());
        assert!(s.open(Some(b"nope")).is_err());
        let session = s.open(Some(b"t0k")).expect("session");
        let with = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", v.parse().expect("header"));
            m
        };
        assert!(s.check(&with(&format!("Bearer {session}"))).is_ok());
        assert!(s.check(&with("Bearer t0k")).is_ok());
        assert_eq!(
            s.check(&with("Bearer other")).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            s.check(&MetadataMap::new()).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        assert!(Sessions::new(None).check(&MetadataMap::new()).is_ok());
    }
}
