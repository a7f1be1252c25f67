//! The service's messages from the `.proto`, compiled by protox (no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/calculator.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
