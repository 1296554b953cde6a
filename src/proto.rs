//! The only place generated gRPC code is included. Everything else reaches it as
//! `multitenant::proto::v1`.

/// `multitenant.v1`: the agent service, its client and its messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("multitenant.v1");
}
