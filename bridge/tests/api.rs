//! API tests of the OAuth router, in process (`app(state).oneshot(request)`) with an injected clock.

mod api {
    mod authz;
    mod device;
    mod exchange;
    mod federated;
    mod fuzz_corpus;
    pub mod harness;
    mod introspection;
    mod login_pages;
    mod registration;
    mod token;
    mod user_grants;
}
