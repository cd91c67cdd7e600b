//! The test issuer's JWK set, served in-process (a tower service) or on 127.0.0.1.

use std::{
    convert::Infallible,
    fmt,
    future::{ready, Ready},
    io,
    net::SocketAddr,
    task::{Context, Poll},
};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};
use tower_service::Service;

use super::TestIssuer;
use crate::body::Buffered;

/// Where the JWK set is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where the OpenID Connect discovery document is served (by [`JwksServer`] only).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Answers `GET` (and `HEAD`) of `/.well-known/jwks.json` with the issuer's current public JWK
/// set ([`TestIssuer::jwk_set`], `Cache-Control: no-cache`), `404` for other paths, `405` for
/// other methods. Mount it in a test app, or call it directly; see [`TestIssuer::jwks_service`].
#[derive(Clone)]
pub struct JwksService {
    issuer: TestIssuer,
    /// The server's base URL, for the discovery document's `jwks_uri`.
    base: Option<String>,
}

impl fmt::Debug for JwksService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksService").field("issuer", &self.issuer).finish()
    }
}

impl JwksService {
    fn respond(&self, method: &Method, path: &str) -> Response<Buffered> {
        if method != Method::GET && method != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let body = match (path, &self.base) {
            (JWKS_PATH, _) => self.issuer.jwks_json(),
            (DISCOVERY_PATH, Some(base)) => serde_json::json!({
                "issuer": self.issuer.issuer(),
                "jwks_uri": format!("{base}{JWKS_PATH}"),
            })
            .to_string(),
            _ => return status(StatusCode::NOT_FOUND),
        };
        let mut response = Response::new(if method == Method::HEAD {
            Buffered::default()
        } else {
            Buffered::new(body)
        });
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

fn status(status: StatusCode) -> Response<Buffered> {
    let mut response = Response::new(Buffered::default());
    *response.status_mut() = status;
    response
}

impl<B> Service<Request<B>> for JwksService {
    type Response = Response<Buffered>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Buffered>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(request.method(), request.uri().path())))
    }
}

/// The issuer's JWK set served over HTTP on 127.0.0.1; the server stops when this is dropped.
///
/// Made by [`TestIssuer::serve`]. Besides the JWK set it serves an OpenID Connect discovery
/// document whose `issuer` is the test issuer's and whose `jwks_uri` points here, for
/// [`RemoteJwks::discover_at`](crate::auth::RemoteJwks::discover_at).
pub struct JwksServer {
    addr: SocketAddr,
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub(super) async fn start(issuer: TestIssuer) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let service = JwksService { issuer, base: Some(base.clone()) };
        let task = tokio::spawn(async move {
            // Dropping the set (when the accept loop is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors or the like: wait instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let service = service.clone();
                connections.spawn(async move {
                    let handler = hyper::service::service_fn(move |request| {
                        let mut service = service.clone();
                        service.call(request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, base, task })
    }

    /// The URL of the JWK set: `http://127.0.0.1:<port>/.well-known/jwks.json`, for
    /// [`RemoteJwks::from_url`](crate::auth::RemoteJwks::from_url).
    pub fn url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base)
    }

    /// The URL of the discovery document.
    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for JwksServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksServer").field("addr", &self.addr).finish()
    }
}

impl TestIssuer {
    /// A tower service answering `GET /.well-known/jwks.json` with this issuer's current
    /// public JWK set; it follows rotations.
    ///
    /// ```
    /// use http::{Request, StatusCode};
    /// use tower::ServiceExt;
    /// use tower_shield::testing::TestIssuer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let issuer = TestIssuer::ed25519();
    /// let request = Request::get("/.well-known/jwks.json").body(()).unwrap();
    /// let response = issuer.jwks_service().oneshot(request).await.unwrap();
    /// assert_eq!(response.status(), StatusCode::OK);
    /// let jwks: serde_json::Value = serde_json::from_slice(&response.into_body().bytes()).unwrap();
    /// assert_eq!(jwks["keys"][0]["kid"], "test-key-1");
    /// assert!(jwks["keys"][0].get("d").is_none()); // no private part
    /// # }
    /// ```
    pub fn jwks_service(&self) -> JwksService {
        JwksService { issuer: self.clone(), base: None }
    }

    /// Serves the JWK set (and a discovery document) on a free 127.0.0.1 port until the
    /// returned [`JwksServer`] is dropped. Needs a tokio runtime.
    ///
    /// ```
    /// use tower_shield::{auth::{RemoteJwks, Verdict}, testing::TestIssuer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let issuer = TestIssuer::rs256();
    /// let server = issuer.serve().await?;
    /// let jwt = issuer.jwt().with_key_source(RemoteJwks::from_url(&server.url()).build()?).build()?;
    ///
    /// let token = issuer.token().subject("alice").sign();
    /// let Verdict::Pending(fetch) = jwt.verify(&token) else { panic!("keys are fetched lazily") };
    /// assert_eq!(fetch.await?.subject(), "alice");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Binding the port failed.
    pub async fn serve(&self) -> io::Result<JwksServer> {
        JwksServer::start(self.clone()).await
    }
}
