//! herd-proto's codec with the Python signatures of `herd._codec`, the pure-Python reference:
//! the same functions, arguments, message tuples and `ProtocolError`s, so that one test suite
//! checks both against docs/protocol-vectors.json. Encoding and decoding are herd-proto's own
//! (`encode_frame`, `decode_body`), not a second implementation.

use herd_proto::codec::{self, FrameError};
use herd_proto::{
    BatchTaskRef, FromWorker, Outcome, ToWorker, ToWorkerRef, HEADER_LEN, MAX_FRAME_CEILING,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;
use pyo3::types::{PyBytes, PyTuple, PyType};
use serde::Serialize;

/// `herd._codec.ProtocolError`: one exception class for both codecs, so `except ProtocolError`
/// holds whichever is in use.
pub fn protocol_error(py: Python<'_>, message: String) -> PyErr {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    match CLASS.import(py, "herd._codec", "ProtocolError") {
        Ok(class) => PyErr::from_type(class.clone(), message),
        Err(e) => e,
    }
}

fn frame_error(py: Python<'_>, e: FrameError) -> PyErr {
    protocol_error(py, e.to_string())
}

/// An unsigned integer field: what does not fit is a `ProtocolError`, as in `_codec`.
fn uint<T: TryFrom<u64>>(py: Python<'_>, n: &Bound<'_, PyAny>, bits: u32) -> PyResult<T> {
    let wide = n.extract::<u64>().map_err(|_| {
        protocol_error(
            py,
            format!("cannot encode {n} as an unsigned {bits}-bit integer"),
        )
    })?;
    T::try_from(wide)
        .map_err(|_| protocol_error(py, format!("integer {wide} does not fit in {bits} bits")))
}

/// The bytes of a bytes-like object: bytes without a copy, anything else through `bytes()`.
pub fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
    let b = copy.cast::<PyBytes>()?;
    f(b.as_bytes())
}

fn frame<'py, T: Serialize>(py: Python<'py>, msg: &T, max: usize) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    codec::encode_frame(msg, &mut out, max).map_err(|e| frame_error(py, e))?;
    Ok(PyBytes::new(py, &out))
}

fn max_frame(py: Python<'_>, max: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    match max {
        None => Ok(MAX_FRAME_CEILING),
        Some(m) => uint::<u64>(py, m, 64).map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
    }
}

/// Frame for Hello{protocol, pid, token}: the worker's first frame.
#[pyfunction]
#[pyo3(signature = (protocol, pid, token, max_frame=None))]
pub fn encode_hello<'py>(
    py: Python<'py>,
    protocol: &Bound<'py, PyAny>,
    pid: &Bound<'py, PyAny>,
    token: String,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Hello {
        protocol: uint(py, protocol, 32)?,
        pid: uint(py, pid, 32)?,
        token,
    };
    frame(py, &msg, self::max_frame(py, max_frame)?)
}

fn done<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    outcome: Outcome,
    max: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Done {
        id: uint(py, id, 64)?,
        outcome,
    };
    frame(py, &msg, max_frame(py, max)?)
}

/// Frame for Done{id, Ok(output)}; `output` is bytes-like.
#[pyfunction]
#[pyo3(signature = (id, output, max_frame=None))]
pub fn encode_done_ok<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    output: &Bound<'py, PyAny>,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let output = with_bytes(output, |b| Ok(b.to_vec()))?;
    done(py, id, Outcome::Ok(output), max_frame)
}

/// Frame for Done{id, Err{retryable, message}}.
#[pyfunction]
#[pyo3(signature = (id, retryable, message, max_frame=None))]
pub fn encode_done_err<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    retryable: bool,
    message: String,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    done(py, id, Outcome::Err { retryable, message }, max_frame)
}

/// Frame for Done{id, RetryAfter{message, delay_ms}} (version 3).
#[pyfunction]
#[pyo3(signature = (id, message, delay_ms, max_frame=None))]
pub fn encode_done_retry_after<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    message: String,
    delay_ms: &Bound<'py, PyAny>,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let delay_ms = uint(py, delay_ms, 64)?;
    done(py, id, Outcome::RetryAfter { message, delay_ms }, max_frame)
}

/// Frame for Done{id, Cancelled} (version 3).
#[pyfunction]
pub fn encode_done_cancelled<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    done(py, id, Outcome::Cancelled, None)
}

/// Frame for Withdrawn{id} (version 3).
#[pyfunction]
pub fn encode_withdrawn<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Withdrawn {
        id: uint(py, id, 64)?,
    };
    frame(py, &msg, MAX_FRAME_CEILING)
}

/// Frame for Kept{id} (version 3).
#[pyfunction]
pub fn encode_kept<'py>(py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Kept {
        id: uint(py, id, 64)?,
    };
    frame(py, &msg, MAX_FRAME_CEILING)
}

/// Frame for Batching{max} (version 3, optional): sent right after Hello by a worker whose
/// handler takes up to `max` tasks per call.
#[pyfunction]
pub fn encode_batching<'py>(
    py: Python<'py>,
    max: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Batching {
        max: uint(py, max, 32)?,
    };
    frame(py, &msg, MAX_FRAME_CEILING)
}

/// Frame for Heartbeat.
#[pyfunction]
pub fn encode_heartbeat(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    frame(py, &FromWorker::Heartbeat, MAX_FRAME_CEILING)
}

/// Frame for Chunk{id, data} (version 2); `data` is bytes-like.
#[pyfunction]
#[pyo3(signature = (id, data, max_frame=None))]
pub fn encode_chunk<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = FromWorker::Chunk {
        id: uint(py, id, 64)?,
        data: with_bytes(data, |b| Ok(b.to_vec()))?,
    };
    frame(py, &msg, self::max_frame(py, max_frame)?)
}

/// Frame for Task{id, attempt, payload} (the supervisor's side).
#[pyfunction]
#[pyo3(signature = (id, attempt, payload, max_frame=None))]
pub fn encode_task<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
    attempt: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyAny>,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let id = uint(py, id, 64)?;
    let attempt = uint(py, attempt, 32)?;
    let max = self::max_frame(py, max_frame)?;
    with_bytes(payload, |payload| {
        let msg = ToWorkerRef::Task {
            id,
            attempt,
            payload,
        };
        frame(py, &msg, max)
    })
}

/// Frame for Batch{tasks} (version 3, the supervisor's side): (id, attempt, payload) each.
#[pyfunction]
#[pyo3(signature = (tasks, max_frame=None))]
pub fn encode_batch<'py>(
    py: Python<'py>,
    tasks: &Bound<'py, PyAny>,
    max_frame: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let max = self::max_frame(py, max_frame)?;
    let mut owned: Vec<(u64, u32, Vec<u8>)> = Vec::new();
    for task in tasks.try_iter()? {
        let (id, attempt, payload): (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>) =
            task?.extract()?;
        owned.push((
            uint(py, &id, 64)?,
            uint(py, &attempt, 32)?,
            with_bytes(&payload, |b| Ok(b.to_vec()))?,
        ));
    }
    let tasks: Vec<BatchTaskRef<'_>> = owned
        .iter()
        .map(|(id, attempt, payload)| BatchTaskRef {
            id: *id,
            attempt: *attempt,
            payload,
        })
        .collect();
    frame(py, &ToWorkerRef::Batch { tasks: &tasks }, max)
}

/// Frame for Shutdown, the termination frame (the supervisor's side).
#[pyfunction]
pub fn encode_shutdown(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    frame(py, &ToWorker::Shutdown, MAX_FRAME_CEILING)
}

/// Frame for Withdraw{id} (version 3, the supervisor's side).
#[pyfunction]
pub fn encode_withdraw<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = ToWorker::Withdraw {
        id: uint(py, id, 64)?,
    };
    frame(py, &msg, MAX_FRAME_CEILING)
}

/// Frame for Cancel{id} (version 3, the supervisor's side).
#[pyfunction]
pub fn encode_cancel<'py>(
    py: Python<'py>,
    id: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let msg = ToWorker::Cancel {
        id: uint(py, id, 64)?,
    };
    frame(py, &msg, MAX_FRAME_CEILING)
}

/// `buf[p:end]` (end None: the end of buf), refused if the bounds are outside it.
fn body<R>(
    buf: &Bound<'_, PyAny>,
    p: usize,
    end: Option<usize>,
    f: impl FnOnce(&[u8]) -> PyResult<R>,
) -> PyResult<R> {
    let py = buf.py();
    with_bytes(buf, |b| {
        let end = end.unwrap_or(b.len());
        match b.get(p..end) {
            Some(body) => f(body),
            None => Err(protocol_error(
                py,
                format!(
                    "malformed frame: bounds {p}..{end} outside a buffer of {} bytes",
                    b.len()
                ),
            )),
        }
    })
}

/// Decodes a ToWorker body: ("Task", id, attempt, payload), ("Shutdown",), ("Withdraw", id) or
/// ("Cancel", id). A Batch is refused: it is only ever sent to a worker that sent Batching,
/// which decodes with `decode_to_batching_worker`.
#[pyfunction]
#[pyo3(signature = (buf, p=0, end=None))]
pub fn decode_to_worker<'py>(
    buf: &Bound<'py, PyAny>,
    p: usize,
    end: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = buf.py();
    let msg = body(buf, p, end, |b| {
        codec::decode_body::<ToWorker>(b).map_err(|e| frame_error(py, e))
    })?;
    if matches!(msg, ToWorker::Batch { .. }) {
        return Err(protocol_error(
            py,
            "malformed frame: a Batch, to a worker that did not send Batching".into(),
        ));
    }
    to_worker_tuple(py, msg)
}

/// Decodes a ToWorker body for a worker that sent Batching: as `decode_to_worker`, or
/// ("Batch", [(id, attempt, payload), ...]).
#[pyfunction]
#[pyo3(signature = (buf, p=0, end=None))]
pub fn decode_to_batching_worker<'py>(
    buf: &Bound<'py, PyAny>,
    p: usize,
    end: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = buf.py();
    let msg = body(buf, p, end, |b| {
        codec::decode_body::<ToWorker>(b).map_err(|e| frame_error(py, e))
    })?;
    to_worker_tuple(py, msg)
}

fn to_worker_tuple(py: Python<'_>, msg: ToWorker) -> PyResult<Bound<'_, PyTuple>> {
    match msg {
        ToWorker::Task {
            id,
            attempt,
            payload,
        } => ("Task", id, attempt, PyBytes::new(py, &payload)).into_pyobject(py),
        ToWorker::Shutdown => ("Shutdown",).into_pyobject(py),
        ToWorker::Withdraw { id } => ("Withdraw", id).into_pyobject(py),
        ToWorker::Cancel { id } => ("Cancel", id).into_pyobject(py),
        ToWorker::Batch { tasks } => {
            let list = PyList::empty(py);
            for t in tasks {
                list.append((t.id, t.attempt, PyBytes::new(py, &t.payload)))?;
            }
            ("Batch", list).into_pyobject(py)
        }
    }
}

/// Decodes a FromWorker body: ("Hello", protocol, pid, token), ("Done", id, outcome),
/// ("Heartbeat",), ("Chunk", id, data), ("Withdrawn", id) or ("Kept", id).
#[pyfunction]
#[pyo3(signature = (buf, p=0, end=None))]
pub fn decode_from_worker<'py>(
    buf: &Bound<'py, PyAny>,
    p: usize,
    end: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = buf.py();
    let msg = body(buf, p, end, |b| {
        codec::decode_body::<FromWorker>(b).map_err(|e| frame_error(py, e))
    })?;
    match msg {
        FromWorker::Hello {
            protocol,
            pid,
            token,
        } => ("Hello", protocol, pid, token).into_pyobject(py),
        FromWorker::Done { id, outcome } => {
            let outcome = match outcome {
                Outcome::Ok(output) => ("Ok", PyBytes::new(py, &output)).into_pyobject(py)?,
                Outcome::Err { retryable, message } => {
                    ("Err", retryable, message).into_pyobject(py)?
                }
                Outcome::RetryAfter { message, delay_ms } => {
                    ("RetryAfter", message, delay_ms).into_pyobject(py)?
                }
                Outcome::Cancelled => ("Cancelled",).into_pyobject(py)?,
            };
            ("Done", id, outcome).into_pyobject(py)
        }
        FromWorker::Heartbeat => ("Heartbeat",).into_pyobject(py),
        FromWorker::Chunk { id, data } => ("Chunk", id, PyBytes::new(py, &data)).into_pyobject(py),
        FromWorker::Withdrawn { id } => ("Withdrawn", id).into_pyobject(py),
        FromWorker::Kept { id } => ("Kept", id).into_pyobject(py),
        FromWorker::Batching { max } => ("Batching", max).into_pyobject(py),
    }
}

/// The body length announced by the header at buf[pos:pos+4] (which must be there).
#[pyfunction]
pub fn frame_len(buf: &Bound<'_, PyAny>, pos: usize, max_frame: usize) -> PyResult<usize> {
    let py = buf.py();
    body(buf, pos, None, |b| match codec::frame_len(b, max_frame) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(protocol_error(
            py,
            format!("malformed frame: fewer than {HEADER_LEN} header bytes at {pos}"),
        )),
        Err(e) => Err(frame_error(py, e)),
    })
}
