//! The API's seams (`api::IncomingBody`, `api::Assets`): request bodies as bytes, and a
//! deployment without static assets.

use std::cell::Cell;
use std::rc::Rc;

use async_trait::async_trait;

/// A request body in host tests: bytes, read or forwarded within the limit asked for.
pub(crate) struct Bytes(pub Vec<u8>);

/// A body [`Bytes`] forwarded: the bytes and the limit the forwarding stream would hold
/// them to.
pub(crate) struct Forwarded {
    pub bytes: Vec<u8>,
    pub limit: usize,
}

#[async_trait(?Send)]
impl crate::api::IncomingBody for Bytes {
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, crate::api::BodyError> {
        if self.0.len() > limit {
            return Err(crate::api::BodyError::TooLarge(limit));
        }
        Ok(self.0)
    }

    fn forward(self: Box<Self>, limit: usize) -> crate::http::BodyStream {
        crate::http::BodyStream(Box::new(Forwarded {
            bytes: self.0,
            limit,
        }))
    }
}

/// A body that says whether anything read or forwarded it; otherwise [`Bytes`].
pub(crate) struct Watched {
    bytes: Vec<u8>,
    touched: Rc<Cell<bool>>,
}

impl Watched {
    /// The body, and the flag that turns true when it is touched.
    pub(crate) fn new(bytes: Vec<u8>) -> (Self, Rc<Cell<bool>>) {
        let touched = Rc::new(Cell::new(false));
        (
            Self {
                bytes,
                touched: touched.clone(),
            },
            touched,
        )
    }
}

#[async_trait(?Send)]
impl crate::api::IncomingBody for Watched {
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, crate::api::BodyError> {
        self.touched.set(true);
        Box::new(Bytes(self.bytes)).read(limit).await
    }

    fn forward(self: Box<Self>, limit: usize) -> crate::http::BodyStream {
        self.touched.set(true);
        Box::new(Bytes(self.bytes)).forward(limit)
    }
}

/// A deployment without static assets (the end-to-end tests serve the real ones).
pub(crate) struct NoAssets;

#[async_trait(?Send)]
impl crate::api::Assets for NoAssets {
    async fn read(&self, _path: &str) -> Option<Vec<u8>> {
        None
    }
}
