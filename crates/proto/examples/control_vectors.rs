//! Prints the control-protocol test vectors, `docs/control-vectors.json`:
//!
//! ```sh
//! cargo run -q -p herd-proto --example control_vectors > docs/control-vectors.json
//! ```
//!
//! `tests/vectors.rs` fails while the checked-in file differs from this output.

#[path = "../tests/support/control_vectors.rs"]
mod control_vectors;

fn main() {
    print!("{}", control_vectors::render(&control_vectors::build()));
}
