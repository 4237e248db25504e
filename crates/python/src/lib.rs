//! `herd._native`: the Python worker SDK's per-event work in Rust, built from the project's own
//! crates. `herd.worker` uses it when it imports (and `HERD_PURE_PYTHON` is not set), else the
//! pure-Python loop; `herd._codec` stays the reference codec, and both are checked against
//! docs/protocol-vectors.json.
//!
//! - [`codec`]: herd-proto's codec with `herd._codec`'s Python signatures.
//! - [`serve`]: herd-worker's serve loop driving a Python handler.

mod codec;
mod serve;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
mod _native {
    #[pymodule_export]
    use crate::codec::{
        decode_from_worker, decode_to_batching_worker, decode_to_worker, encode_batch,
        encode_batching, encode_cancel, encode_chunk, encode_done_cancelled, encode_done_err,
        encode_done_ok, encode_done_retry_after, encode_heartbeat, encode_hello, encode_kept,
        encode_shutdown, encode_task, encode_withdraw, encode_withdrawn, frame_len,
    };
    #[pymodule_export]
    use crate::serve::{serve, serve_batch, Channel};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("PROTOCOL_VERSION", herd_proto::PROTOCOL_VERSION)?;
        m.add("HEADER_LEN", herd_proto::HEADER_LEN)?;
        m.add("DEFAULT_MAX_FRAME", herd_proto::DEFAULT_MAX_FRAME)?;
        m.add("MAX_FRAME_CEILING", herd_proto::MAX_FRAME_CEILING)?;
        Ok(())
    }
}
