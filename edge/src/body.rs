//! The two body types of the proxy: what it sends upstream and what it answers downstream.
//!
//! Enums rather than boxed trait objects, so a call allocates no body box.

use crate::backend_client::{BackendBody, Error};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A request body sent upstream: a unary message the edge buffered (and checked), a client's
/// stream passed through as it arrives, or the messages of a client's stream the edge routed
/// to one backend (the body ends when the sender is dropped: a half-close).
pub enum Outgoing {
    Buffered(Option<Bytes>),
    Streamed(Incoming),
    Routed(mpsc::Receiver<Bytes>),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Outgoing::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Outgoing::Streamed(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Error::from),
            Outgoing::Routed(messages) => messages
                .poll_recv(cx)
                .map(|message| message.map(|m| Ok(Frame::data(m)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Buffered(bytes) => bytes.is_none(),
            Outgoing::Streamed(incoming) => incoming.is_end_stream(),
            Outgoing::Routed(messages) => messages.is_closed() && messages.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Buffered(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Outgoing::Buffered(None) => SizeHint::with_exact(0),
            Outgoing::Streamed(incoming) => incoming.size_hint(),
            Outgoing::Routed(_) => SizeHint::default(),
        }
    }
}

/// An upstream answer's body (the gateway's, or a backend's), none (a trailers-only gRPC
/// answer made by the edge), or the frames of a stream the edge answers from several backends.
pub enum Upstream {
    Answer(Incoming),
    Backend(BackendBody),
    Empty,
    Merged(mpsc::Receiver<Frame<Bytes>>),
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Upstream::Answer(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Error::from),
            Upstream::Backend(body) => Pin::new(body).poll_frame(cx),
            Upstream::Empty => Poll::Ready(None),
            Upstream::Merged(frames) => frames.poll_recv(cx).map(|frame| frame.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Answer(incoming) => incoming.is_end_stream(),
            Upstream::Backend(body) => body.is_end_stream(),
            Upstream::Empty => true,
            Upstream::Merged(frames) => frames.is_closed() && frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Answer(incoming) => incoming.size_hint(),
            Upstream::Backend(body) => body.size_hint(),
            Upstream::Empty => SizeHint::with_exact(0),
            Upstream::Merged(_) => SizeHint::default(),
        }
    }
}
