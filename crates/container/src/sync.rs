//! Messages between the runtime and the processes it forks while they set
//! up a container: one JSON object per line over a socketpair.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Parent to child: go on (cgroup joined, maps written, hooks done).
    Go,
    /// Child to parent: write my uid/gid maps.
    Maps,
    /// Intermediate child to parent: the container process's host pid.
    Pid(i32),
    /// Init to parent: namespaces and mounts are ready, run createRuntime.
    Hooks,
    /// Init to parent: set up, waiting for `start`.
    Ready,
    /// Child to parent: a setup step the container goes on without
    /// (an ambient capability that could not be raised).
    Warn(String),
    /// A child failed; the message says why.
    Err(String),
}

pub struct Chan {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Chan {
    pub fn new(s: UnixStream) -> Result<Self> {
        let w = s.try_clone().ctx(|| "socketpair".into())?;
        Ok(Chan {
            r: BufReader::new(s),
            w,
        })
    }

    pub fn send(&mut self, m: &Msg) -> Result<()> {
        let mut line = serde_json::to_vec(m).unwrap_or_default();
        line.push(b'\n');
        self.w.write_all(&line).ctx(|| "sync socket".into())
    }

    /// Next message; None when the other side closed (it exec'd or died).
    pub fn recv(&mut self) -> Result<Option<Msg>> {
        let mut line = String::new();
        // A line is a few bytes; cap it so a confused peer cannot make us
        // buffer without end.
        let n = std::io::Read::take(&mut self.r, 1 << 20)
            .read_line(&mut line)
            .ctx(|| "sync socket".into())?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| Error::Child(format!("bad sync message {line:?}: {e}")))
    }

    /// Expect `Go`; anything else is an error.
    pub fn expect_go(&mut self) -> Result<()> {
        match self.recv()? {
            Some(Msg::Go) => Ok(()),
            Some(Msg::Err(e)) => Err(Error::Child(e)),
            other => Err(Error::Child(format!("expected Go, got {other:?}"))),
        }
    }
}
