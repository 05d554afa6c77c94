//! The `beskar7` binary.
fn main() {}
