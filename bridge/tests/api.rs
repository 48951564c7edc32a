//! API tests of the OAuth router, in process (`app(state).oneshot(request)`) with an injected clock.

mod api {
    mod exchange;
    mod federated;
    pub mod harness;
    mod introspection;
    mod token;
}
