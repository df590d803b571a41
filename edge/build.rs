//! Compiles the control protocol (`protos/tgw/control/v1/control.proto`) with protox, a protobuf
//! compiler written in Rust, so building the edge needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../protos/tgw/control/v1/control.proto";
    let descriptors = protox::compile([proto], ["../protos"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
