//! The CLINT (SiFive core-local interruptor): per-hart software interrupt
//! (`msip`), timer compare (`mtimecmp`) and the shared `mtime` counter.
//!
//! Timer interrupts are delivered by one scheduler thread ([`Timers`]) that
//! sleeps until the earliest armed deadline, so neither a running nor a
//! sleeping hart has to poll the clock. The same scheduler serves the
//! built-in SBI's `set_timer`, which drives STIP instead of MTIP.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::irq::{HartIrqs, MSIP, MTIP, STIP};
use crate::layout::TIMEBASE_HZ;
use crate::mmio::MmioDevice;

/// The machine's clock: ticks at [`TIMEBASE_HZ`] from the machine's start.
/// `mtime` and every hart's `time` CSR read this one clock.
#[derive(Clone, Copy, Debug)]
pub struct Timebase {
    start: Instant,
}

impl Default for Timebase {
    fn default() -> Self {
        Self::new()
    }
}

impl Timebase {
    pub fn new() -> Self {
        Timebase {
            start: Instant::now(),
        }
    }

    /// Current tick count.
    pub fn now(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos();
        (ns * TIMEBASE_HZ as u128 / 1_000_000_000) as u64
    }

    /// The host instant at which the clock reaches `ticks`.
    pub fn instant_of(&self, ticks: u64) -> Instant {
        let ns = ticks as u128 * 1_000_000_000 / TIMEBASE_HZ as u128;
        // Deadlines beyond a few centuries are "never"; cap to avoid overflow.
        let ns = ns.min(u64::MAX as u128 / 2) as u64;
        self.start
            .checked_add(Duration::from_nanos(ns))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30))
    }
}

/// Which timer interrupt a deadline drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// Machine timer (CLINT `mtimecmp`): MTIP.
    Machine,
    /// Supervisor timer programmed through the built-in SBI: STIP.
    Supervisor,
}

impl TimerKind {
    fn bit(self) -> u64 {
        match self {
            TimerKind::Machine => MTIP,
            TimerKind::Supervisor => STIP,
        }
    }
    fn index(self) -> usize {
        match self {
            TimerKind::Machine => 0,
            TimerKind::Supervisor => 1,
        }
    }
}

struct TimerShared {
    timebase: Timebase,
    irqs: Arc<dyn HartIrqs>,
    /// Armed deadline in ticks per (hart, kind); `u64::MAX` when disarmed.
    deadlines: Vec<[AtomicU64; 2]>,
    lock: Mutex<()>,
    cond: Condvar,
    stop: AtomicBool,
}

/// Deadline scheduler for the timer interrupts of all harts.
pub struct Timers {
    shared: Arc<TimerShared>,
    thread: Option<JoinHandle<()>>,
}

impl Timers {
    /// Starts the scheduler thread for `harts` harts.
    pub fn new(harts: usize, timebase: Timebase, irqs: Arc<dyn HartIrqs>) -> Self {
        let shared = Arc::new(TimerShared {
            timebase,
            irqs,
            deadlines: (0..harts)
                .map(|_| [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)])
                .collect(),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vk-timers".into())
            .spawn(move || timer_thread(&s))
            .expect("spawning the timer thread");
        Timers {
            shared,
            thread: Some(thread),
        }
    }

    pub fn timebase(&self) -> Timebase {
        self.shared.timebase
    }

    /// Sets the compare value of `hart`'s `kind` timer: the interrupt is
    /// pending while the clock is at or past `deadline` (level semantics,
    /// like `mtimecmp`).
    pub fn set(&self, hart: usize, kind: TimerKind, deadline: u64) {
        let Some(slots) = self.shared.deadlines.get(hart) else {
            return;
        };
        let now = self.shared.timebase.now();
        if deadline <= now {
            slots[kind.index()].store(u64::MAX, Ordering::Release);
            self.shared.irqs.set_mip(hart, kind.bit(), true);
        } else {
            self.shared.irqs.set_mip(hart, kind.bit(), false);
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            slots[kind.index()].store(deadline, Ordering::Release);
            self.shared.cond.notify_one();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::Release);
            self.shared.cond.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn timer_thread(s: &TimerShared) {
    let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let now = s.timebase.now();
        let mut next = u64::MAX;
        for (hart, slots) in s.deadlines.iter().enumerate() {
            for kind in [TimerKind::Machine, TimerKind::Supervisor] {
                let slot = &slots[kind.index()];
                let d = slot.load(Ordering::Acquire);
                if d == u64::MAX {
                    continue;
                }
                if d <= now {
                    // Only fire if nobody re-armed the slot meanwhile.
                    if slot
                        .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        s.irqs.set_mip(hart, kind.bit(), true);
                    }
                } else {
                    next = next.min(d);
                }
            }
        }
        guard = if next == u64::MAX {
            s.cond.wait(guard).unwrap_or_else(|e| e.into_inner())
        } else {
            let wait = s
                .timebase
                .instant_of(next)
                .saturating_duration_since(Instant::now());
            s.cond
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0
        };
    }
}

/// Register offsets inside the CLINT (SiFive layout, as on QEMU's board).
const MSIP_OFF: u64 = 0x0;
const MTIMECMP_OFF: u64 = 0x4000;
const MTIME_OFF: u64 = 0xbff8;

/// The CLINT device.
pub struct Clint {
    harts: usize,
    msip: Vec<AtomicU32>,
    mtimecmp: Vec<AtomicU64>,
    timers: Arc<Timers>,
    irqs: Arc<dyn HartIrqs>,
}

impl Clint {
    pub fn new(harts: usize, timers: Arc<Timers>, irqs: Arc<dyn HartIrqs>) -> Self {
        Clint {
            harts,
            msip: (0..harts).map(|_| AtomicU32::new(0)).collect(),
            mtimecmp: (0..harts).map(|_| AtomicU64::new(u64::MAX)).collect(),
            timers,
            irqs,
        }
    }

    fn write_mtimecmp(&self, hart: usize, v: u64) {
        self.mtimecmp[hart].store(v, Ordering::Release);
        self.timers.set(hart, TimerKind::Machine, v);
    }
}

impl MmioDevice for Clint {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let h = self.harts as u64;
        match offset {
            o if o < MSIP_OFF + 4 * h => {
                let hart = ((o - MSIP_OFF) / 4) as usize;
                if size >= 4 && o % 4 == 0 {
                    self.msip[hart].load(Ordering::Acquire) as u64
                } else {
                    0
                }
            }
            o if (MTIMECMP_OFF..MTIMECMP_OFF + 8 * h).contains(&o) => {
                let hart = ((o - MTIMECMP_OFF) / 8) as usize;
                let v = self.mtimecmp[hart].load(Ordering::Acquire);
                read_part(v, o % 8, size)
            }
            o if (MTIME_OFF..MTIME_OFF + 8).contains(&o) => {
                read_part(self.timers.timebase().now(), o - MTIME_OFF, size)
            }
            _ => 0,
        }
    }

    fn write(&self, offset: u64, size: u8, value: u64) {
        let h = self.harts as u64;
        match offset {
            o if o < MSIP_OFF + 4 * h => {
                if o % 4 != 0 {
                    return;
                }
                let hart = ((o - MSIP_OFF) / 4) as usize;
                let bit = (value & 1) as u32;
                self.msip[hart].store(bit, Ordering::Release);
                self.irqs.set_mip(hart, MSIP, bit != 0);
            }
            o if (MTIMECMP_OFF..MTIMECMP_OFF + 8 * h).contains(&o) => {
                let hart = ((o - MTIMECMP_OFF) / 8) as usize;
                let old = self.mtimecmp[hart].load(Ordering::Acquire);
                let v = write_part(old, o % 8, size, value);
                self.write_mtimecmp(hart, v);
            }
            // mtime is read-only here: every hart's time CSR shares the host
            // clock, and firmware does not need to set it.
            _ => {}
        }
    }
}

/// Extracts `size` bytes at byte `shift` of a 64-bit register.
pub(crate) fn read_part(reg: u64, shift: u64, size: u8) -> u64 {
    let v = reg >> (shift * 8);
    match size {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// Replaces `size` bytes at byte `shift` of a 64-bit register.
pub(crate) fn write_part(reg: u64, shift: u64, size: u8, value: u64) -> u64 {
    let bits = (size as u64 * 8).min(64);
    let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
    let sh = shift * 8;
    if sh >= 64 {
        return reg;
    }
    (reg & !(mask << sh)) | ((value & mask) << sh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Recorder {
        pub mip: Mutex<Vec<u64>>,
        pub cond: Condvar,
    }
    impl HartIrqs for Recorder {
        fn set_mip(&self, hart: usize, mask: u64, level: bool) {
            let mut m = self.mip.lock().unwrap();
            if level {
                m[hart] |= mask;
            } else {
                m[hart] &= !mask;
            }
            self.cond.notify_all();
        }
    }

    fn setup(harts: usize) -> (Arc<Recorder>, Clint) {
        let rec = Arc::new(Recorder {
            mip: Mutex::new(vec![0; harts]),
            cond: Condvar::new(),
        });
        let timers = Arc::new(Timers::new(harts, Timebase::new(), rec.clone()));
        let clint = Clint::new(harts, timers, rec.clone());
        (rec, clint)
    }

    #[test]
    fn msip_sets_and_clears_the_software_interrupt() {
        let (rec, clint) = setup(2);
        clint.write(4, 4, 1);
        assert_eq!(rec.mip.lock().unwrap()[1], MSIP);
        assert_eq!(clint.read(4, 4), 1);
        assert_eq!(clint.read(0, 4), 0);
        clint.write(4, 4, 0);
        assert_eq!(rec.mip.lock().unwrap()[1], 0);
    }

    #[test]
    fn mtime_advances_at_the_timebase() {
        let (_rec, clint) = setup(1);
        let a = clint.read(MTIME_OFF, 8);
        std::thread::sleep(Duration::from_millis(20));
        let b = clint.read(MTIME_OFF, 8);
        // 20 ms at 10 MHz is 200000 ticks.
        assert!(b - a >= 200_000, "{a} {b}");
        assert!(b - a < 200_000 * 50, "{a} {b}");
        // 32-bit halves read consistently with the 64-bit value.
        let lo = clint.read(MTIME_OFF, 4);
        let hi = clint.read(MTIME_OFF + 4, 4);
        assert!(hi <= (b >> 32) + 1 && lo <= u32::MAX as u64);
    }

    #[test]
    fn mtimecmp_fires_after_its_deadline_and_clears_when_moved() {
        let (rec, clint) = setup(1);
        let now = clint.read(MTIME_OFF, 8);
        // Past deadline: pending at once.
        clint.write(MTIMECMP_OFF, 8, now);
        assert_eq!(rec.mip.lock().unwrap()[0], MTIP);
        // Future deadline via two 32-bit halves: clears, then fires.
        let d = now + 300_000; // 30 ms
        clint.write(MTIMECMP_OFF + 4, 4, u32::MAX as u64);
        assert_eq!(rec.mip.lock().unwrap()[0], 0);
        clint.write(MTIMECMP_OFF, 4, d & 0xffff_ffff);
        clint.write(MTIMECMP_OFF + 4, 4, d >> 32);
        assert_eq!(clint.read(MTIMECMP_OFF, 8), d);
        let m = rec.mip.lock().unwrap();
        let (m, _) = rec
            .cond
            .wait_timeout_while(m, Duration::from_secs(5), |m| m[0] == 0)
            .unwrap();
        assert_eq!(m[0], MTIP);
        drop(m);
        assert!(clint.read(MTIME_OFF, 8) >= d);
    }

    #[test]
    fn supervisor_timer_drives_stip() {
        let (rec, clint) = setup(2);
        let t = clint.timers.clone();
        let now = t.timebase().now();
        t.set(1, TimerKind::Supervisor, now + 100_000);
        assert_eq!(rec.mip.lock().unwrap()[1], 0);
        let m = rec.mip.lock().unwrap();
        let (m, _) = rec
            .cond
            .wait_timeout_while(m, Duration::from_secs(5), |m| m[1] == 0)
            .unwrap();
        assert_eq!(m[1], STIP);
        assert_eq!(m[0], 0);
    }
}
