//! Prints the worker-protocol test vectors, `docs/protocol-vectors.json`:
//!
//! ```sh
//! cargo run -q -p herd-proto --example protocol_vectors > docs/protocol-vectors.json
//! ```
//!
//! `tests/vectors.rs` fails while the checked-in file differs from this output.

#[path = "../tests/support/vectors.rs"]
mod vectors;

fn main() {
    print!("{}", vectors::render(&vectors::build()));
}
