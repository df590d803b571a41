//! The two body types of the proxy: what it sends upstream and what it answers downstream.
//!
//! Enums rather than boxed trait objects, so a call allocates no body box.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body sent upstream: a unary message the edge buffered (and checked), or a
/// client's stream passed through as it arrives.
pub enum Outgoing {
    Buffered(Option<Bytes>),
    Streamed(Incoming),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Outgoing::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Outgoing::Streamed(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Buffered(bytes) => bytes.is_none(),
            Outgoing::Streamed(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Buffered(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Outgoing::Buffered(None) => SizeHint::with_exact(0),
            Outgoing::Streamed(incoming) => incoming.size_hint(),
        }
    }
}

/// An upstream answer's body, or none (a trailers-only gRPC answer made by the edge).
pub enum Upstream {
    Answer(Incoming),
    Empty,
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Upstream::Answer(incoming) => Pin::new(incoming).poll_frame(cx),
            Upstream::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Answer(incoming) => incoming.is_end_stream(),
            Upstream::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Answer(incoming) => incoming.size_hint(),
            Upstream::Empty => SizeHint::with_exact(0),
        }
    }
}
