//! The built-in SBI (RISC-V Supervisor Binary Interface, v2.0 subset): what
//! OpenSBI would provide to an S-mode kernel, implemented on the host so no
//! firmware file is needed. Extensions: BASE, TIME, IPI, RFENCE, HSM, SRST,
//! DBCN and the legacy console, timer, IPI, fence and shutdown calls.
//!
//! [`handle`] decodes one `ecall` from S-mode and acts through [`SbiHost`],
//! which the machine implements; the result says how the calling hart goes
//! on.

use crate::power::StopReason;

pub const EXT_BASE: u64 = 0x10;
pub const EXT_TIME: u64 = 0x5449_4D45;
pub const EXT_IPI: u64 = 0x0073_5049;
pub const EXT_RFENCE: u64 = 0x5246_4E43;
pub const EXT_HSM: u64 = 0x0048_534D;
pub const EXT_SRST: u64 = 0x5352_5354;
pub const EXT_DBCN: u64 = 0x4442_434E;
const LEGACY_SET_TIMER: u64 = 0;
const LEGACY_PUTCHAR: u64 = 1;
const LEGACY_GETCHAR: u64 = 2;
const LEGACY_CLEAR_IPI: u64 = 3;
const LEGACY_SEND_IPI: u64 = 4;
const LEGACY_FENCE_I: u64 = 5;
const LEGACY_SFENCE_VMA: u64 = 6;
const LEGACY_SFENCE_VMA_ASID: u64 = 7;
const LEGACY_SHUTDOWN: u64 = 8;

pub const SUCCESS: i64 = 0;
pub const ERR_FAILED: i64 = -1;
pub const ERR_NOT_SUPPORTED: i64 = -2;
pub const ERR_INVALID_PARAM: i64 = -3;
pub const ERR_INVALID_ADDRESS: i64 = -5;
pub const ERR_ALREADY_AVAILABLE: i64 = -6;

/// SBI specification version 2.0.
const SPEC_VERSION: u64 = 2 << 24;
/// Implementation id: not one of the registered ids (0..=10), so the kernel
/// does not apply another implementation's quirks.
pub const IMPL_ID: u64 = 0x766b;
/// Largest DBCN transfer served in one call; the kernel loops for more.
/// Bounds the host buffer a guest can make us allocate.
const DBCN_MAX: u64 = 4096;

/// HSM hart states.
pub const HART_STARTED: i64 = 0;
pub const HART_STOPPED: i64 = 1;
pub const HART_START_PENDING: i64 = 2;

/// A remote fence request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// `fence.i`: drop cached instructions / translated code.
    Instruction,
    /// `sfence.vma` over `[start, start + size)`, all address spaces or one.
    Vma {
        start: u64,
        size: u64,
        asid: Option<u64>,
    },
}

/// What the machine provides to the SBI.
pub trait SbiHost {
    fn harts(&self) -> usize;
    /// Programs hart `hart`'s supervisor timer (STIP at `deadline` ticks).
    fn set_timer(&self, hart: usize, deadline: u64);
    /// Raises (or lowers) SSIP on `hart`.
    fn set_ssip(&self, hart: usize, level: bool);
    /// Makes every hart in `targets` perform `fence` before returning.
    fn remote_fence(&self, caller: usize, targets: &[usize], fence: Fence);
    /// HSM: starts stopped hart `hart` in S-mode at `start` with a1 = `opaque`.
    fn hart_start(&self, hart: usize, start: u64, opaque: u64) -> i64;
    /// HSM state of `hart`.
    fn hart_status(&self, hart: usize) -> i64;
    fn console_write(&self, bytes: &[u8]);
    fn console_read(&self) -> Option<u8>;
    /// Reads guest physical memory; false if not RAM.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes guest physical memory; false if not RAM.
    fn write_phys(&self, addr: u64, buf: &[u8]) -> bool;
    fn stop_machine(&self, reason: StopReason);
}

/// How the calling hart continues after the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbiAction {
    /// Set a0 = error, a1 = value, continue after the ecall.
    Return { error: i64, value: u64 },
    /// Legacy call: set only a0.
    ReturnLegacy(u64),
    /// HSM hart_stop: the hart stops until another hart starts it.
    StopHart,
    /// HSM retentive suspend: sleep like WFI, then return success.
    Suspend,
    /// The machine is stopping (SRST, legacy shutdown).
    Halt,
}

fn ret(error: i64, value: u64) -> SbiAction {
    SbiAction::Return { error, value }
}

/// Expands an SBI hart mask into hart ids; `None` if it names a hart that
/// does not exist.
pub fn hart_mask(harts: usize, mask: u64, base: u64) -> Option<Vec<usize>> {
    if base == u64::MAX {
        return Some((0..harts).collect());
    }
    let mut out = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            let h = base.checked_add(bit)?;
            if h >= harts as u64 {
                return None;
            }
            out.push(h as usize);
        }
    }
    Some(out)
}

fn supported(eid: u64) -> bool {
    matches!(
        eid,
        EXT_BASE | EXT_TIME | EXT_IPI | EXT_RFENCE | EXT_HSM | EXT_SRST | EXT_DBCN
    ) || (LEGACY_SET_TIMER..=LEGACY_SHUTDOWN).contains(&eid) && eid != LEGACY_SEND_IPI
}

/// Handles one SBI call from hart `hart` with registers `a[0..8]`
/// (a7 = extension id, a6 = function id).
pub fn handle(host: &dyn SbiHost, hart: usize, a: [u64; 8]) -> SbiAction {
    let (eid, fid) = (a[7], a[6]);
    match eid {
        EXT_BASE => match fid {
            0 => ret(SUCCESS, SPEC_VERSION),
            1 => ret(SUCCESS, IMPL_ID),
            2 => ret(SUCCESS, 1),
            3 => ret(SUCCESS, supported(a[0]) as u64),
            // mvendorid, marchid, mimpid: not a vendor's hart.
            4..=6 => ret(SUCCESS, 0),
            _ => ret(ERR_NOT_SUPPORTED, 0),
        },
        EXT_TIME if fid == 0 => {
            host.set_timer(hart, a[0]);
            ret(SUCCESS, 0)
        }
        EXT_IPI if fid == 0 => match hart_mask(host.harts(), a[0], a[1]) {
            Some(targets) => {
                for t in targets {
                    host.set_ssip(t, true);
                }
                ret(SUCCESS, 0)
            }
            None => ret(ERR_INVALID_PARAM, 0),
        },
        EXT_RFENCE => {
            let fence = match fid {
                0 => Fence::Instruction,
                1 => Fence::Vma {
                    start: a[2],
                    size: a[3],
                    asid: None,
                },
                2 => Fence::Vma {
                    start: a[2],
                    size: a[3],
                    asid: Some(a[4]),
                },
                // Hypervisor fences: no H extension here.
                _ => return ret(ERR_NOT_SUPPORTED, 0),
            };
            match hart_mask(host.harts(), a[0], a[1]) {
                Some(targets) => {
                    host.remote_fence(hart, &targets, fence);
                    ret(SUCCESS, 0)
                }
                None => ret(ERR_INVALID_PARAM, 0),
            }
        }
        EXT_HSM => match fid {
            0 => {
                if a[0] >= host.harts() as u64 {
                    return ret(ERR_INVALID_PARAM, 0);
                }
                ret(host.hart_start(a[0] as usize, a[1], a[2]), 0)
            }
            1 => SbiAction::StopHart,
            2 => {
                if a[0] >= host.harts() as u64 {
                    return ret(ERR_INVALID_PARAM, 0);
                }
                ret(SUCCESS, host.hart_status(a[0] as usize) as u64)
            }
            3 => match a[0] as u32 {
                // Default retentive suspend: behaves as WFI.
                0 => SbiAction::Suspend,
                _ => ret(ERR_NOT_SUPPORTED, 0),
            },
            _ => ret(ERR_NOT_SUPPORTED, 0),
        },
        EXT_SRST if fid == 0 => {
            let (ty, reason) = (a[0] as u32, a[1] as u32);
            let stop = match ty {
                0 if reason == 1 => StopReason::PowerOff(1),
                0 => StopReason::PowerOff(0),
                1 | 2 => StopReason::Reset,
                _ => return ret(ERR_INVALID_PARAM, 0),
            };
            host.stop_machine(stop);
            SbiAction::Halt
        }
        EXT_DBCN => match fid {
            0 | 1 => {
                let len = a[0].min(DBCN_MAX) as usize;
                let addr = a[1];
                if a[2] != 0 && a[1] != 0 {
                    // Above 2^64 on RV64: not memory.
                    return ret(ERR_INVALID_PARAM, 0);
                }
                let mut buf = vec![0u8; len];
                if fid == 0 {
                    if !host.read_phys(addr, &mut buf) {
                        return ret(ERR_INVALID_PARAM, 0);
                    }
                    host.console_write(&buf);
                    ret(SUCCESS, len as u64)
                } else {
                    let mut n = 0;
                    while n < len {
                        match host.console_read() {
                            Some(b) => {
                                buf[n] = b;
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    if !host.write_phys(addr, &buf[..n]) {
                        return ret(ERR_INVALID_PARAM, 0);
                    }
                    ret(SUCCESS, n as u64)
                }
            }
            2 => {
                host.console_write(&[a[0] as u8]);
                ret(SUCCESS, 0)
            }
            _ => ret(ERR_NOT_SUPPORTED, 0),
        },
        LEGACY_SET_TIMER => {
            host.set_timer(hart, a[0]);
            SbiAction::ReturnLegacy(0)
        }
        LEGACY_PUTCHAR => {
            host.console_write(&[a[0] as u8]);
            SbiAction::ReturnLegacy(0)
        }
        LEGACY_GETCHAR => {
            SbiAction::ReturnLegacy(host.console_read().map_or(u64::MAX, |b| b as u64))
        }
        LEGACY_CLEAR_IPI => {
            host.set_ssip(hart, false);
            SbiAction::ReturnLegacy(0)
        }
        LEGACY_FENCE_I | LEGACY_SFENCE_VMA | LEGACY_SFENCE_VMA_ASID => {
            // The legacy calls pass the hart mask by virtual address; fencing
            // every hart is a correct superset.
            let all: Vec<usize> = (0..host.harts()).collect();
            let fence = if eid == LEGACY_FENCE_I {
                Fence::Instruction
            } else {
                Fence::Vma {
                    start: 0,
                    size: u64::MAX,
                    asid: None,
                }
            };
            host.remote_fence(hart, &all, fence);
            SbiAction::ReturnLegacy(0)
        }
        LEGACY_SHUTDOWN => {
            host.stop_machine(StopReason::PowerOff(0));
            SbiAction::Halt
        }
        _ => ret(ERR_NOT_SUPPORTED, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Host {
        log: RefCell<Vec<String>>,
        out: RefCell<Vec<u8>>,
        input: RefCell<Vec<u8>>,
        ram: RefCell<Vec<u8>>,
    }
    const RAM: u64 = 0x8000_0000;
    impl SbiHost for Host {
        fn harts(&self) -> usize {
            4
        }
        fn set_timer(&self, hart: usize, deadline: u64) {
            self.log
                .borrow_mut()
                .push(format!("timer {hart} {deadline}"));
        }
        fn set_ssip(&self, hart: usize, level: bool) {
            self.log.borrow_mut().push(format!("ssip {hart} {level}"));
        }
        fn remote_fence(&self, caller: usize, targets: &[usize], fence: Fence) {
            self.log
                .borrow_mut()
                .push(format!("fence {caller} {targets:?} {fence:?}"));
        }
        fn hart_start(&self, hart: usize, start: u64, opaque: u64) -> i64 {
            self.log
                .borrow_mut()
                .push(format!("start {hart} {start:#x} {opaque}"));
            if hart == 0 {
                ERR_ALREADY_AVAILABLE
            } else {
                SUCCESS
            }
        }
        fn hart_status(&self, hart: usize) -> i64 {
            if hart == 0 {
                HART_STARTED
            } else {
                HART_STOPPED
            }
        }
        fn console_write(&self, bytes: &[u8]) {
            self.out.borrow_mut().extend_from_slice(bytes);
        }
        fn console_read(&self) -> Option<u8> {
            let mut i = self.input.borrow_mut();
            (!i.is_empty()).then(|| i.remove(0))
        }
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
            let ram = self.ram.borrow();
            let Some(off) = addr.checked_sub(RAM) else {
                return false;
            };
            match ram.get(off as usize..off as usize + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write_phys(&self, addr: u64, buf: &[u8]) -> bool {
            let mut ram = self.ram.borrow_mut();
            let Some(off) = addr.checked_sub(RAM) else {
                return false;
            };
            match ram.get_mut(off as usize..off as usize + buf.len()) {
                Some(s) => {
                    s.copy_from_slice(buf);
                    true
                }
                None => false,
            }
        }
        fn stop_machine(&self, reason: StopReason) {
            self.log.borrow_mut().push(format!("stop {reason:?}"));
        }
    }

    fn call(h: &Host, hart: usize, eid: u64, fid: u64, args: &[u64]) -> SbiAction {
        let mut a = [0u64; 8];
        a[..args.len()].copy_from_slice(args);
        a[6] = fid;
        a[7] = eid;
        handle(h, hart, a)
    }

    #[test]
    fn base_extension_reports_version_and_probes() {
        let h = Host::default();
        assert_eq!(call(&h, 0, EXT_BASE, 0, &[]), ret(0, 2 << 24));
        assert_eq!(call(&h, 0, EXT_BASE, 1, &[]), ret(0, IMPL_ID));
        for eid in [
            EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST, EXT_DBCN, 1,
        ] {
            assert_eq!(call(&h, 0, EXT_BASE, 3, &[eid]), ret(0, 1), "{eid:#x}");
        }
        assert_eq!(call(&h, 0, EXT_BASE, 3, &[0x504D55]), ret(0, 0), "PMU");
        assert_eq!(call(&h, 0, 0x1234_5678, 0, &[]), ret(ERR_NOT_SUPPORTED, 0));
    }

    #[test]
    fn timer_ipi_and_fences_reach_the_named_harts() {
        let h = Host::default();
        call(&h, 2, EXT_TIME, 0, &[12345]);
        assert_eq!(call(&h, 0, EXT_IPI, 0, &[0b101, 1]), ret(0, 0));
        assert_eq!(
            call(&h, 0, EXT_IPI, 0, &[0b1, 4]),
            ret(ERR_INVALID_PARAM, 0)
        );
        call(&h, 1, EXT_RFENCE, 1, &[0, u64::MAX, 0x1000, 0x2000]);
        call(&h, 1, EXT_RFENCE, 0, &[0b1, 0]);
        assert_eq!(
            call(&h, 1, EXT_RFENCE, 3, &[1, 0]),
            ret(ERR_NOT_SUPPORTED, 0)
        );
        assert_eq!(
            *h.log.borrow(),
            [
                "timer 2 12345",
                "ssip 1 true",
                "ssip 3 true",
                "fence 1 [0, 1, 2, 3] Vma { start: 4096, size: 8192, asid: None }",
                "fence 1 [0] Instruction",
            ]
        );
    }

    #[test]
    fn hsm_start_status_stop() {
        let h = Host::default();
        assert_eq!(call(&h, 0, EXT_HSM, 0, &[2, 0x8020_0000, 7]), ret(0, 0));
        assert_eq!(
            call(&h, 0, EXT_HSM, 0, &[0, 0x8020_0000, 7]),
            ret(ERR_ALREADY_AVAILABLE, 0)
        );
        assert_eq!(
            call(&h, 0, EXT_HSM, 0, &[9, 0, 0]),
            ret(ERR_INVALID_PARAM, 0)
        );
        assert_eq!(call(&h, 0, EXT_HSM, 2, &[1]), ret(0, HART_STOPPED as u64));
        assert_eq!(call(&h, 1, EXT_HSM, 1, &[]), SbiAction::StopHart);
        assert_eq!(call(&h, 1, EXT_HSM, 3, &[0]), SbiAction::Suspend);
    }

    #[test]
    fn srst_maps_to_power_off_and_reset() {
        let h = Host::default();
        assert_eq!(call(&h, 0, EXT_SRST, 0, &[0, 0]), SbiAction::Halt);
        assert_eq!(call(&h, 0, EXT_SRST, 0, &[1, 0]), SbiAction::Halt);
        assert_eq!(call(&h, 0, EXT_SRST, 0, &[0, 1]), SbiAction::Halt);
        assert_eq!(call(&h, 0, EXT_SRST, 0, &[9, 0]), ret(ERR_INVALID_PARAM, 0));
        assert_eq!(
            *h.log.borrow(),
            ["stop PowerOff(0)", "stop Reset", "stop PowerOff(1)"]
        );
    }

    #[test]
    fn debug_console_reads_and_writes_guest_memory() {
        let h = Host::default();
        *h.ram.borrow_mut() = b"hello world".to_vec();
        assert_eq!(call(&h, 0, EXT_DBCN, 0, &[5, RAM, 0]), ret(0, 5));
        assert_eq!(call(&h, 0, EXT_DBCN, 2, &[b'!' as u64]), ret(0, 0));
        assert_eq!(&*h.out.borrow(), b"hello!");
        assert_eq!(
            call(&h, 0, EXT_DBCN, 0, &[5, RAM + 10, 0]),
            ret(ERR_INVALID_PARAM, 0)
        );
        assert_eq!(
            call(&h, 0, EXT_DBCN, 0, &[5, 0, 1]),
            ret(ERR_INVALID_PARAM, 0)
        );
        *h.input.borrow_mut() = b"ab".to_vec();
        assert_eq!(call(&h, 0, EXT_DBCN, 1, &[8, RAM, 0]), ret(0, 2));
        assert_eq!(&h.ram.borrow()[..3], b"abl");
        assert_eq!(
            call(&h, 0, LEGACY_GETCHAR, 0, &[]),
            SbiAction::ReturnLegacy(u64::MAX)
        );
        call(&h, 0, LEGACY_PUTCHAR, 0, &[b'z' as u64]);
        assert_eq!(h.out.borrow().last(), Some(&b'z'));
    }
}
