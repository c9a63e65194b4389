//! OCI hooks: run a program with the container's state JSON on stdin.

use crate::error::{Error, Result};
use oci_spec::runtime::Hook;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `hooks` in order; the first failure stops and is returned.
pub fn run(kind: &'static str, hooks: Option<&Vec<Hook>>, state_json: &[u8]) -> Result<()> {
    for (index, h) in hooks.into_iter().flatten().enumerate() {
        let fail = |msg: String| Error::Hook {
            kind,
            index,
            path: h.path().display().to_string(),
            msg,
        };
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some(a0) = args.first() {
                cmd.arg0(a0);
            }
            cmd.args(args.iter().skip(1));
        }
        cmd.env_clear();
        for e in h.env().iter().flatten() {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(format!("starting: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its stdin is fine (EPIPE ignored).
            let _ = stdin.write_all(state_json);
        }
        let deadline = h
            .timeout()
            .filter(|t| *t > 0)
            .map(|t| Instant::now() + Duration::from_secs(t as u64));
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(fail(format!("waiting: {e}"))),
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s",
                    h.timeout().unwrap_or(0)
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            return Err(fail(format!("exited with {status}")));
        }
    }
    Ok(())
}
