//! A plain command-line component: valid wasm, but it exports no HTTP handler.

fn main() {
    println!("I am a command, not a service");
}
