//! The board's devices behind port and MMIO exits: the 16550 serial port
//! (vm-superio) at 0x3f8, the i8042 keyboard controller (its reset line
//! ends the run), and the virtio-mmio slots. Guest-controlled access sizes are checked here: a port access
//! is 1, 2 or 4 bytes, an MMIO access 1 to 8.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::i8042::{Effect, I8042};
use crate::layout::*;

/// Interrupt of the serial port: a KVM irqfd on IOAPIC pin 4 (an edge, as
/// Firecracker's).
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The virtio-mmio QueueNotify register.
pub const QUEUE_NOTIFY: u64 = 0x50;

/// What a device access asks the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// The guest pulsed the reset line (i8042 command 0xfe).
    Reset,
}

/// One virtio-mmio slot: the transport behind a lock shared by the vCPUs
/// (register accesses) and the device's notification relay.
pub struct VirtioSlot {
    pub base: u64,
    pub transport: Mutex<virtio::MmioTransport>,
}

/// Port and MMIO devices; shared by all vCPU threads.
pub struct Devices {
    pub serial: Mutex<Serial<IrqFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>>,
    pub virtio: Vec<Arc<VirtioSlot>>,
    pub i8042: Mutex<I8042>,
    /// IRQ 1, the keyboard's interrupt (an irqfd).
    pub kbd_irq: IrqFdTrigger,
    /// Accesses nobody answers (reads give all ones, writes are dropped),
    /// as on a PC bus; counted for the run's report.
    pub unhandled_io: std::sync::atomic::AtomicU64,
    pub unhandled_mmio: std::sync::atomic::AtomicU64,
    /// QueueNotify writes that reached the vCPU loop as MMIO exits instead
    /// of the slot's ioeventfds (none, while KVM honours them).
    pub notify_exits: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking vCPU thread poisons nothing we cannot keep using: the
    // device state is plain data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An access of a size the bus does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSize {
    pub len: usize,
}

impl Devices {
    pub fn port_out(&self, port: u16, data: &[u8]) -> Result<Action, BadSize> {
        if !matches!(data.len(), 1 | 2 | 4) {
            return Err(BadSize { len: data.len() });
        }
        // A wide access covers consecutive byte ports (out dx, ax to
        // 0x3f8 writes 0x3f8 and 0x3f9), as on the ISA bus.
        for (i, &b) in data.iter().enumerate() {
            let p = port.wrapping_add(i as u16);
            match p {
                COM1_PORT..=0x3ff => {
                    // An output error (stdout closed) is not the guest's fault.
                    let _ = lock(&self.serial).write((p - COM1_PORT) as u8, b);
                }
                I8042_CMD_PORT | I8042_DATA_PORT => {
                    match lock(&self.i8042).write((p - I8042_DATA_PORT) as u8, b) {
                        Effect::Reset => return Ok(Action::Reset),
                        Effect::Interrupt => self.kbd_interrupt(),
                        Effect::None => {}
                    }
                }
                _ => {
                    self.unhandled_io
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok(Action::Continue)
    }

    pub fn port_in(&self, port: u16, data: &mut [u8]) -> Result<(), BadSize> {
        if !matches!(data.len(), 1 | 2 | 4) {
            return Err(BadSize { len: data.len() });
        }
        for (i, b) in data.iter_mut().enumerate() {
            let p = port.wrapping_add(i as u16);
            *b = match p {
                COM1_PORT..=0x3ff => lock(&self.serial).read((p - COM1_PORT) as u8),
                I8042_CMD_PORT | I8042_DATA_PORT => {
                    let (b, more) = lock(&self.i8042).read((p - I8042_DATA_PORT) as u8);
                    if more {
                        self.kbd_interrupt();
                    }
                    b
                }
                _ => {
                    self.unhandled_io
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    0xff
                }
            };
        }
        Ok(())
    }

    fn kbd_interrupt(&self) {
        // A failed eventfd write (its counter full) loses nothing: an
        // interrupt is pending already.
        let _ = self.kbd_irq.trigger();
    }

    fn slot(&self, addr: u64, len: usize) -> Option<(&VirtioSlot, u64)> {
        let i = addr.checked_sub(VIRTIO_MMIO_BASE)? / VIRTIO_MMIO_STRIDE;
        let slot = self.virtio.get(i as usize)?;
        let off = addr - slot.base;
        // The whole access must lie in the register window.
        (off + len as u64 <= virtio::MMIO_WINDOW_SIZE).then_some((slot, off))
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BadSize> {
        if !(1..=8).contains(&data.len()) {
            return Err(BadSize { len: data.len() });
        }
        match self.slot(addr, data.len()) {
            Some((slot, off)) => lock(&slot.transport).read(off, data),
            None => {
                self.unhandled_mmio
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                data.fill(0xff);
            }
        }
        Ok(())
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BadSize> {
        if !(1..=8).contains(&data.len()) {
            return Err(BadSize { len: data.len() });
        }
        match self.slot(addr, data.len()) {
            Some((slot, off)) => {
                if off == QUEUE_NOTIFY {
                    self.notify_exits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                lock(&slot.transport).write(off, data)
            }
            None => {
                self.unhandled_mmio
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Feeds host input bytes to the serial port (it raises its interrupt).
pub fn serial_input(devices: &Devices, bytes: &[u8]) {
    let _ = lock(&devices.serial).enqueue_raw_bytes(bytes);
}
