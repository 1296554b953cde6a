//! Compiles `proto/` into Rust with the pure-Rust `protox` compiler, so a build needs no system
//! `protoc`. The generated code lands in `OUT_DIR` and is included by `src/proto.rs` only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["multitenant/v1/agent.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
