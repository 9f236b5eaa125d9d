//! Compiles the protocol with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/flotilla/v1/flotilla.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().bytes(".flotilla.v1.ModelChunk.data").bytes(".flotilla.v1.UpdateChunk.data").compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
