//! [`RunClock`]: how long a machine has run, its pauses left out, so that
//! a time limit (`--timeout`) counts only running time.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a wait looks at the clock again while the machine is paused
/// (a pause has no deadline to wait for).
const PAUSED_POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct State {
    /// Running time before the current run.
    ran: Duration,
    /// When the current run started; `None` while paused.
    since: Option<Instant>,
}

/// A machine's running time, pauses excluded.
#[derive(Debug)]
pub struct RunClock {
    state: Mutex<State>,
}

impl RunClock {
    /// A clock at zero, running unless `paused`.
    pub fn new(paused: bool) -> RunClock {
        RunClock {
            state: Mutex::new(State {
                ran: Duration::ZERO,
                since: (!paused).then(Instant::now),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops counting (a no-op while paused).
    pub fn pause(&self) {
        let mut s = self.lock();
        if let Some(since) = s.since.take() {
            s.ran += since.elapsed();
        }
    }

    /// Counts again (a no-op while running).
    pub fn resume(&self) {
        let mut s = self.lock();
        if s.since.is_none() {
            s.since = Some(Instant::now());
        }
    }

    /// The running time so far.
    pub fn ran(&self) -> Duration {
        let s = self.lock();
        s.ran + s.since.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Waits until `wait_for` reports a stop or the machine has run for
    /// `limit`; `wait_for(d)` waits up to `d` for a stop. `None`: the
    /// limit came first.
    pub fn wait_limit<T>(
        &self,
        limit: Duration,
        mut wait_for: impl FnMut(Duration) -> Option<T>,
    ) -> Option<T> {
        loop {
            let running = self.lock().since.is_some();
            let left = limit.saturating_sub(self.ran());
            if running && left.is_zero() {
                return None;
            }
            let chunk = if running { left } else { PAUSED_POLL };
            if let Some(stop) = wait_for(chunk) {
                return Some(stop);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_do_not_count() {
        let c = RunClock::new(true);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.ran(), Duration::ZERO);
        c.resume();
        std::thread::sleep(Duration::from_millis(5));
        c.pause();
        let ran = c.ran();
        assert!(ran >= Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.ran(), ran);
        // A paused clock never reaches a limit: the wait keeps asking.
        let mut asked = 0;
        let r = c.wait_limit(Duration::from_millis(1), |_| {
            asked += 1;
            (asked == 3).then_some("stopped")
        });
        assert_eq!(r, Some("stopped"));
        c.resume();
        assert_eq!(
            c.wait_limit(Duration::from_millis(1), |d| {
                std::thread::sleep(d);
                None::<()>
            }),
            None
        );
    }
}
