//! Guest-side bindings for the `weft:platform` worlds, plus helpers for the common
//! "read the whole request, write the whole response" case.
//!
//! A component implements `exports::wasi::http::incoming_handler::Guest` and calls
//! `weft_sdk::export!(MyType)`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "weft:platform/http-service",
    pub_export_macro: true,
    default_bindings_module: "weft_sdk",
    generate_all,
});

#[cfg(feature = "grpc")]
pub mod grpc;
pub mod http;
