//! The one body type the proxy sends and answers with.
//!
//! Forwarded bodies stream hyper's `Incoming` frame by frame (never buffered); synthetic
//! responses (errors, admin) and small payloads that were hashed for signing are `Full`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::pool::PooledBody;

/// Boxed error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed or a complete body. Both variants are `Unpin`, so no projection is needed.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body streamed from the other side of the proxy.
    Incoming(Incoming),
    /// A body held in memory.
    Full(Full<Bytes>),
    /// A response streamed from a pooled HTTP/1.1 upstream connection.
    Pooled(PooledBody),
}

impl ProxyBody {
    /// A complete body from bytes or a string.
    pub fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Full::new(data.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        ProxyBody::Incoming(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Pooled(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(body) => body.is_end_stream(),
            ProxyBody::Full(body) => body.is_end_stream(),
            ProxyBody::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(body) => body.size_hint(),
            ProxyBody::Full(body) => body.size_hint(),
            ProxyBody::Pooled(body) => body.size_hint(),
        }
    }
}
