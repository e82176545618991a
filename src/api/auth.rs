//! Who is calling: `authorization: Bearer <API key>`, checked by a tower
//! layer in front of the `mcpd.v1` services. The organization comes from
//! the key, never from anything else the caller sends; handlers find it in
//! the request's extensions ([`Caller`]). Health and reflection stay open.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::{Request, Status};

use super::{observe::CallerSlot, status::to_status};
use crate::manager::Manager;

pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The paths that need a key: every method of the registry's package.
const GUARDED: &str = "/mcpd.v1.";

/// The authenticated caller's organization.
#[derive(Clone, Debug)]
pub(super) struct Caller(pub(super) Arc<str>);

/// The organization of an authenticated call. Every `mcpd.v1` call passes
/// the layer first; a request without it is a wiring bug, not the caller's.
pub(super) fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.0.to_string())
        .ok_or_else(|| {
            tracing::error!("a call reached a handler without passing authentication");
            Status::internal("internal error; see the daemon's log")
        })
}

fn missing() -> Status {
    Status::unauthenticated(
        "missing `authorization: Bearer <API key>` metadata; an operator creates keys with `mcpd keys create --org ORG`",
    )
}

/// The key of an `authorization: Bearer <key>` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, Status> {
    let value = headers
        .get(AUTHORIZATION_HEADER)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .filter(|key| !key.is_empty())
        .ok_or_else(missing)
}

#[derive(Clone)]
pub(super) struct AuthLayer {
    manager: Manager,
}

impl AuthLayer {
    pub(super) fn new(manager: Manager) -> AuthLayer {
        AuthLayer { manager }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            manager: self.manager.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Authenticate<S> {
    inner: S,
    manager: Manager,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(GUARDED) {
            return Box::pin(self.inner.call(request));
        }
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = self.manager.clone();
        Box::pin(async move {
            let organization = match bearer(request.headers()) {
                Ok(key) => manager.authenticate(key).await.map_err(to_status),
                Err(status) => Err(status),
            };
            match organization {
                Ok(organization) => {
                    if let Some(slot) = request.extensions().get::<CallerSlot>() {
                        slot.set(&organization);
                    }
                    request.extensions_mut().insert(Caller(organization.into()));
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
