//! The one place a request's `Principal` is filled in: the `Authenticator` interceptor, in front of
//! every service. Handlers read it back with `principal`.
//!
//! The service authenticates nobody yet (no TLS): every caller is `Principal::unauthenticated()`.
//! mTLS fills this in from the client certificate, here and nowhere else.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::principal::Principal;

/// Tags each request with the caller's principal.
#[derive(Debug, Clone)]
pub struct Authenticator {
    unauthenticated: Arc<Principal>,
}

impl Authenticator {
    /// An authenticator for a service without TLS: every caller is the unauthenticated principal.
    pub fn without_tls() -> Authenticator {
        Authenticator {
            unauthenticated: Arc::new(Principal::unauthenticated()),
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.extensions_mut().insert(Arc::clone(&self.unauthenticated));
        Ok(request)
    }
}

/// The principal the `Authenticator` put on `request`; a request that did not pass it is refused.
pub(super) fn principal<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request carries no authenticated principal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_that_passes_the_authenticator_names_its_principal() {
        assert_eq!(
            principal(&Request::new(())).expect_err("not authenticated").code(),
            tonic::Code::Unauthenticated
        );
        let request = Authenticator::without_tls().call(Request::new(())).expect("passes");
        assert_eq!(principal(&request).expect("tagged").name(), "unauthenticated");
    }
}
