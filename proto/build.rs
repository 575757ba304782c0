//! Compiles `berth/v1/agent.proto` into Rust (client and server) and writes the
//! file descriptor set that the agent serves through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("berth_v1_descriptor.bin"))
        .compile_protos(&["berth/v1/agent.proto"], &["."])?;
    println!("cargo:rerun-if-changed=berth/v1/agent.proto");
    Ok(())
}
