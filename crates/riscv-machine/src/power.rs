//! How a run ends: the `sifive,test` finisher, SBI SRST, HTIF exit, the
//! user's Ctrl-A x, or a fault. The first event wins; everyone waiting on the
//! machine is woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::mmio::MmioDevice;

/// Why the machine stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off with this status (0 = success).
    PowerOff(u32),
    /// The guest asked for a reset (reboot). Linux does this on a panic when
    /// booted with `panic=-1`.
    Reset,
    /// The user pressed Ctrl-A x.
    Quit,
    /// The run's time limit passed.
    Timeout,
    /// The emulation cannot continue (a hart fault the guest cannot see).
    Fatal(String),
}

type StopHook = Box<dyn Fn() + Send + Sync>;

/// The machine's stop switch.
#[derive(Default)]
pub struct Power {
    stopped: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    cond: Condvar,
    hooks: Mutex<Vec<StopHook>>,
}

impl Power {
    pub fn new() -> Arc<Self> {
        Arc::new(Power::default())
    }

    /// Whether the machine has been asked to stop (cheap: one atomic load).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Registers a function called once when the machine stops (e.g. to
    /// interrupt the harts' run loops).
    pub fn on_stop(&self, hook: StopHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Stops the machine for `reason`, unless it already stopped.
    pub fn stop(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_some() {
                return;
            }
            *r = Some(reason);
            self.stopped.store(true, Ordering::Release);
            self.cond.notify_all();
        }
        for h in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h();
        }
    }

    /// The reason, once stopped.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the machine stops.
    pub fn wait(&self) -> StopReason {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            r = self.cond.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits up to `timeout` for the machine to stop.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> Option<StopReason> {
        let r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let (r, _) = self
            .cond
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        r.clone()
    }
}

/// Finisher codes (QEMU's `sifive_test`).
const FINISHER_FAIL: u32 = 0x3333;
const FINISHER_PASS: u32 = 0x5555;
const FINISHER_RESET: u32 = 0x7777;

/// The `sifive,test` finisher at 0x100000: a write of 0x5555 powers off
/// with status 0, `(status << 16) | 0x3333` powers off with `status`,
/// 0x7777 resets. 16-bit writes count too, as in QEMU: OpenSBI's driver
/// resets and powers off with `writew`.
pub struct TestFinisher {
    power: Arc<Power>,
}

impl TestFinisher {
    pub fn new(power: Arc<Power>) -> Self {
        TestFinisher { power }
    }
}

impl MmioDevice for TestFinisher {
    fn read(&self, _offset: u64, _size: u8) -> u64 {
        0
    }

    fn write(&self, offset: u64, size: u8, value: u64) {
        if offset != 0 || size < 2 {
            return;
        }
        let v = value as u32;
        match v & 0xffff {
            FINISHER_PASS => self.power.stop(StopReason::PowerOff(0)),
            FINISHER_FAIL => self.power.stop(StopReason::PowerOff(v >> 16)),
            FINISHER_RESET => self.power.stop(StopReason::Reset),
            // Other values are ignored, as QEMU does.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finisher_codes() {
        for (v, want) in [
            (0x5555u64, Some(StopReason::PowerOff(0))),
            ((7 << 16) | 0x3333, Some(StopReason::PowerOff(7))),
            (0x7777, Some(StopReason::Reset)),
            (0x1234, None),
        ] {
            let p = Power::new();
            TestFinisher::new(p.clone()).write(0, 4, v);
            assert_eq!(p.reason(), want, "{v:#x}");
            assert_eq!(p.is_stopped(), want.is_some());
        }
        // OpenSBI's sifive_test driver writes 16 bits; a byte is ignored.
        for (size, v, want) in [
            (2u8, 0x7777u64, Some(StopReason::Reset)),
            (2, 0x5555, Some(StopReason::PowerOff(0))),
            (1, 0x55, None),
        ] {
            let p = Power::new();
            TestFinisher::new(p.clone()).write(0, size, v);
            assert_eq!(p.reason(), want, "{v:#x}");
            assert_eq!(p.is_stopped(), want.is_some());
        }
    }

    #[test]
    fn first_reason_wins_and_hooks_run_once() {
        let p = Power::new();
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n2 = n.clone();
        p.on_stop(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        p.stop(StopReason::PowerOff(3));
        p.stop(StopReason::Reset);
        assert_eq!(p.wait(), StopReason::PowerOff(3));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
