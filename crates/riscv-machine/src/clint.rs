//! The CLINT (SiFive core-local interruptor): per-hart software interrupt
//! (`msip`), timer compare (`mtimecmp`) and the shared `mtime` counter.
//!
//! `mtimecmp` lives in each hart's [`HartControl`], where the CPU compares
//! it with the machine's [`Clock`] itself (also while it sleeps in WFI), so
//! no timer thread is needed; `mtime` is that same clock.

use std::sync::{Arc, Mutex};

use riscv::{irq, Clock, HartControl};

use crate::mmio::MmioDevice;

/// Register offsets inside the CLINT (SiFive layout, as on QEMU's board).
const MSIP_OFF: u64 = 0x0;
const MTIMECMP_OFF: u64 = 0x4000;
const MTIME_OFF: u64 = 0xbff8;

/// The CLINT device.
pub struct Clint {
    harts: Vec<Arc<HartControl>>,
    /// Each hart's `msip` register. The lock makes the register and the
    /// hart's MSIP line change together: two harts writing 1 and 0 at once
    /// must not leave the register set with the line lowered (a lost IPI).
    msip: Vec<Mutex<u32>>,
    clock: Arc<Clock>,
}

impl Clint {
    pub fn new(harts: Vec<Arc<HartControl>>, clock: Arc<Clock>) -> Self {
        Clint {
            msip: harts.iter().map(|_| Mutex::new(0)).collect(),
            harts,
            clock,
        }
    }

    fn n(&self) -> u64 {
        self.harts.len() as u64
    }
}

impl MmioDevice for Clint {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let h = self.n();
        match offset {
            o if o < MSIP_OFF + 4 * h => {
                let hart = ((o - MSIP_OFF) / 4) as usize;
                if size >= 4 && o.is_multiple_of(4) {
                    *self.msip[hart].lock().unwrap_or_else(|e| e.into_inner()) as u64
                } else {
                    0
                }
            }
            o if (MTIMECMP_OFF..MTIMECMP_OFF + 8 * h).contains(&o) => {
                let hart = ((o - MTIMECMP_OFF) / 8) as usize;
                read_part(self.harts[hart].mtimecmp(), o % 8, size)
            }
            o if (MTIME_OFF..MTIME_OFF + 8).contains(&o) => {
                read_part(self.clock.now(), o - MTIME_OFF, size)
            }
            _ => 0,
        }
    }

    fn write(&self, offset: u64, size: u8, value: u64) {
        let h = self.n();
        match offset {
            o if o < MSIP_OFF + 4 * h => {
                if !o.is_multiple_of(4) {
                    return;
                }
                let hart = ((o - MSIP_OFF) / 4) as usize;
                let bit = (value & 1) as u32;
                let mut reg = self.msip[hart].lock().unwrap_or_else(|e| e.into_inner());
                *reg = bit;
                if bit != 0 {
                    self.harts[hart].raise(irq::MSIP);
                } else {
                    self.harts[hart].lower(irq::MSIP);
                }
            }
            o if (MTIMECMP_OFF..MTIMECMP_OFF + 8 * h).contains(&o) => {
                let hart = &self.harts[((o - MTIMECMP_OFF) / 8) as usize];
                hart.set_mtimecmp(write_part(hart.mtimecmp(), o % 8, size, value));
            }
            o if (MTIME_OFF..MTIME_OFF + 8).contains(&o) => {
                self.clock
                    .set(write_part(self.clock.now(), o - MTIME_OFF, size, value));
            }
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
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let sh = shift * 8;
    if sh >= 64 {
        return reg;
    }
    (reg & !(mask << sh)) | ((value & mask) << sh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riscv::{Hart, HartConfig};
    use std::time::Duration;

    fn setup(n: usize) -> (Vec<Hart>, Clint) {
        let clock = Arc::new(Clock::new(crate::layout::TIMEBASE_HZ));
        let harts: Vec<Hart> = (0..n)
            .map(|i| {
                Hart::new_system(HartConfig {
                    hart_id: i as u64,
                    clock: clock.clone(),
                    sbi_ecalls: false,
                })
            })
            .collect();
        let ctl = harts.iter().map(|h| h.control().clone()).collect();
        (harts, Clint::new(ctl, clock))
    }

    #[test]
    fn msip_reads_back_per_hart() {
        let (_h, clint) = setup(2);
        clint.write(4, 4, 1);
        assert_eq!(clint.read(4, 4), 1);
        assert_eq!(clint.read(0, 4), 0);
        clint.write(4, 4, 0);
        assert_eq!(clint.read(4, 4), 0);
    }

    #[test]
    fn mtime_advances_at_the_timebase_and_mtimecmp_halves_combine() {
        let (harts, clint) = setup(2);
        let a = clint.read(MTIME_OFF, 8);
        std::thread::sleep(Duration::from_millis(20));
        let b = clint.read(MTIME_OFF, 8);
        // 20 ms at 10 MHz is 200000 ticks.
        assert!(b - a >= 200_000, "{a} {b}");
        assert_eq!(clint.read(MTIMECMP_OFF + 8, 8), u64::MAX);
        clint.write(MTIMECMP_OFF + 8, 4, 0x1234_5678);
        clint.write(MTIMECMP_OFF + 12, 4, 0x9);
        assert_eq!(harts[1].control().mtimecmp(), 0x9_1234_5678);
        assert_eq!(clint.read(MTIMECMP_OFF + 12, 4), 0x9);
        assert_eq!(harts[0].control().mtimecmp(), u64::MAX);
    }

    #[test]
    fn parts() {
        assert_eq!(
            write_part(0x1122_3344_5566_7788, 4, 4, 0xaabb_ccdd),
            0xaabb_ccdd_5566_7788
        );
        assert_eq!(read_part(0x1122_3344_5566_7788, 4, 4), 0x1122_3344);
        assert_eq!(
            read_part(0x1122_3344_5566_7788, 0, 8),
            0x1122_3344_5566_7788
        );
        assert_eq!(write_part(5, 9, 8, 1), 5);
    }
}

// ---- persist: the CLINT's state for snapshots ----

/// The CLINT's own state: each hart's `msip`. (`mtimecmp` is saved with
/// each hart, `mtime` is the machine's clock.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClintState {
    pub msip: Vec<u32>,
}

impl Clint {
    /// The CLINT's state (harts stopped).
    pub fn save(&self) -> ClintState {
        ClintState {
            msip: self
                .msip
                .iter()
                .map(|m| *m.lock().unwrap_or_else(|e| e.into_inner()))
                .collect(),
        }
    }

    /// Restores `msip` and drives the harts' MSIP lines to match.
    pub fn restore(&self, st: &ClintState) -> Result<(), crate::snapshot::DeviceStateError> {
        if st.msip.len() != self.msip.len() {
            return Err(crate::snapshot::DeviceStateError::new(
                "clint",
                format!(
                    "{} msip registers for {} harts",
                    st.msip.len(),
                    self.msip.len()
                ),
            ));
        }
        for (i, &v) in st.msip.iter().enumerate() {
            self.write(MSIP_OFF + 4 * i as u64, 4, v as u64);
        }
        Ok(())
    }
}
