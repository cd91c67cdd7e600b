//! The `orders.v1` protocol (`orders.proto` beside this file): the messages, the server and
//! the client that `tonic-build` would generate, written by hand and cut down to two unary
//! methods so the example builds without `protoc`. In a real project, generate this file.

// As in generated code: everything is `pub`, and each side uses only its half.
#![allow(unreachable_pub, dead_code)]

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tonic::{
    body::Body,
    codegen::{http, Service, StdError},
    server::NamedService,
    transport::Channel,
    Request, Response, Status,
};
use tonic_prost::ProstCodec;

/// The service's name in gRPC paths.
pub const SERVICE_NAME: &str = "orders.v1.Orders";
/// The path of `ListOrders`, as `ScopeLayer::per_method` maps it.
pub const LIST_ORDERS: &str = "/orders.v1.Orders/ListOrders";
/// The path of `CreateOrder`.
pub const CREATE_ORDER: &str = "/orders.v1.Orders/CreateOrder";

/// Requests larger than this are refused by the codec (`OUT_OF_RANGE`) before any decoding.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Order {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub item: String,
    #[prost(uint32, tag = "3")]
    pub quantity: u32,
    #[prost(string, tag = "4")]
    pub owner: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOrdersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOrdersResponse {
    #[prost(message, repeated, tag = "1")]
    pub orders: Vec<Order>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateOrderRequest {
    #[prost(string, tag = "1")]
    pub item: String,
    #[prost(uint32, tag = "2")]
    pub quantity: u32,
}

/// The service, implemented by the application.
pub trait Orders: Send + Sync + 'static {
    fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> impl Future<Output = Result<Response<ListOrdersResponse>, Status>> + Send;

    fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> impl Future<Output = Result<Response<Order>, Status>> + Send;
}

/// The server side: routes a gRPC request to its method and runs the prost codec.
#[derive(Debug)]
pub struct OrdersServer<T> {
    inner: Arc<T>,
}

impl<T> OrdersServer<T> {
    pub fn new(inner: T) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl<T> Clone for OrdersServer<T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<T> NamedService for OrdersServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<T, B> Service<http::Request<B>> for OrdersServer<T>
where
    T: Orders,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        match request.uri().path() {
            LIST_ORDERS => Box::pin(async move {
                let method = tower::service_fn(move |r| {
                    let inner = Arc::clone(&inner);
                    async move { inner.list_orders(r).await }
                });
                Ok(grpc().unary(method, request).await)
            }),
            CREATE_ORDER => Box::pin(async move {
                let method = tower::service_fn(move |r| {
                    let inner = Arc::clone(&inner);
                    async move { inner.create_order(r).await }
                });
                Ok(grpc().unary(method, request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// The codec of one call: decodes `Req`, encodes `Res`.
fn grpc<Res, Req>() -> tonic::server::Grpc<ProstCodec<Res, Req>>
where
    Res: prost::Message + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default()).max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// The client side (used by `tests/grpc_example.rs`).
#[derive(Clone, Debug)]
pub struct OrdersClient {
    inner: tonic::client::Grpc<Channel>,
}

impl OrdersClient {
    pub fn new(channel: Channel) -> Self {
        Self { inner: tonic::client::Grpc::new(channel) }
    }

    pub async fn list_orders(
        &mut self,
        request: impl tonic::IntoRequest<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        self.unary(LIST_ORDERS, request).await
    }

    pub async fn create_order(
        &mut self,
        request: impl tonic::IntoRequest<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.unary(CREATE_ORDER, request).await
    }

    /// Calls any unary method by path (the generated methods above use it).
    pub async fn unary<Req, Res>(
        &mut self,
        path: &'static str,
        request: impl tonic::IntoRequest<Req>,
    ) -> Result<Response<Res>, Status>
    where
        Req: prost::Message + Send + 'static,
        Res: prost::Message + Default + Send + 'static,
    {
        self.inner.ready().await.map_err(|e| Status::unknown(format!("not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(path);
        self.inner.unary(request.into_request(), path, ProstCodec::<Req, Res>::default()).await
    }
}
