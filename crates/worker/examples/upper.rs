//! The ten-line worker from the README: upper-cases each event.
use herd_worker::{Task, TaskError};
use std::process::ExitCode;

fn main() -> ExitCode {
    herd_worker::run(|task: &mut Task| {
        let text =
            std::str::from_utf8(task.payload()).map_err(|e| TaskError::fatal(e.to_string()))?;
        Ok(text.to_uppercase().into_bytes())
    })
}
