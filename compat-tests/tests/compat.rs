//! Black-box scenarios against the `meshgate` binary with independent clients: the `oauth2` crate
//! over `adapters::http`, openid-client and jose in node, and raw HTTP for the error contract.
//!
//! Needs `compat-tests/js/node_modules` (scripts/test.sh installs it); `MESHGATE_BIN` selects a
//! prebuilt binary, otherwise the tests build `meshgate` with cargo first.

mod compat {
    pub mod support;

    mod bad_input;
    mod browser;
    mod crash;
    mod device;
    mod examples;
    mod hardening;
    mod hub_edge;
    mod import;
    mod lifecycle;
    mod log_leaks;
    mod login;
    mod matrix;
    mod matrix_runners;
    mod mcp_sdk;
    mod mesh;
    mod mesh_epoch;
    mod oauth2_crate;
    mod openid_client;
    mod operations;
    mod plugins;
    mod private_key_jwt;
    pub mod protect;
    mod recovery;
    mod registration_flood;
    mod secrets;
    mod tls;
    mod upstream;
    mod upstream_login;
}
