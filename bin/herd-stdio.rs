//! herd-stdio, lockstep version (first step): one line to the child, one line back, per task.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};

use herd_worker::{Task, TaskError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = Vec::new();
    herd_worker::run(move |task: &mut Task<'_>| {
        stdin.write_all(task.payload()).map_err(|e| TaskError::fatal(e.to_string()))?;
        stdin.write_all(b"\n").map_err(|e| TaskError::fatal(e.to_string()))?;
        stdin.flush().map_err(|e| TaskError::fatal(e.to_string()))?;
        line.clear();
        stdout.read_until(b'\n', &mut line).map_err(|e| TaskError::fatal(e.to_string()))?;
        line.pop();
        Ok(line.clone())
    })
}
