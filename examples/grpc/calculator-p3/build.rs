//! The same messages as the 0.2 calculator, from the same `.proto` (protox, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/calculator.proto";
    println!("cargo:rerun-if-changed={proto}");
    prost_build::Config::new().compile_fds(protox::compile([proto], ["../proto"])?)?;
    Ok(())
}
