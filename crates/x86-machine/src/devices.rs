//! The board's devices behind port and MMIO exits: the 16550 serial port
//! (vm-superio) at 0x3f8, the i8042 keyboard controller (its reset line
//! ends the run), and the virtio-mmio slots. Guest-controlled access sizes are checked here: a port access
//! is 1, 2 or 4 bytes, an MMIO access 1 to 8.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

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

/// How many bytes of host input wait behind the 16550's 64-byte receive
/// FIFO before the terminal reader is made to wait (as the riscv64
/// board's console queue): bounds memory when the guest does not read.
pub const SERIAL_INPUT_CAPACITY: usize = 4096;

/// Host input on its way to the serial port: bytes the FIFO has no room
/// for yet, and whether the machine is paused (then nothing moves into the
/// device, so that a paused machine's state, and a snapshot of it, stays
/// what the guest last saw; the bytes follow on resume).
#[derive(Default)]
pub struct SerialInput {
    pub held: bool,
    pub queue: VecDeque<u8>,
}

/// Port and MMIO devices; shared by all vCPU threads.
pub struct Devices {
    pub serial: Mutex<Serial<IrqFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>>,
    pub virtio: Vec<Arc<VirtioSlot>>,
    pub i8042: Mutex<I8042>,
    /// Host input not yet in the serial port's FIFO (locked before
    /// `serial` when both are).
    pub serial_input: Mutex<SerialInput>,
    /// Signalled when the input queue has room again.
    pub serial_room: Condvar,
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
                COM1_PORT..=0x3ff => {
                    let b = lock(&self.serial).read((p - COM1_PORT) as u8);
                    // A read may have made room in the FIFO.
                    self.fill_serial(&mut lock(&self.serial_input));
                    b
                }
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

    pub fn kbd_interrupt(&self) {
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

impl Devices {
    /// Moves queued host input into the serial port's FIFO as far as it
    /// has room (the port raises its interrupt), unless held.
    pub fn fill_serial(&self, input: &mut SerialInput) {
        if input.held || input.queue.is_empty() {
            return;
        }
        let mut serial = lock(&self.serial);
        let n = serial.fifo_capacity().min(input.queue.len());
        if n == 0 {
            return;
        }
        let bytes: Vec<u8> = input.queue.iter().take(n).copied().collect();
        // In loopback mode the port takes nothing: the bytes stay queued.
        // A failed interrupt (its eventfd counter full) loses nothing: one
        // is pending already.
        let taken = match serial.enqueue_raw_bytes(&bytes) {
            Ok(taken) => taken,
            Err(_) => n,
        };
        input.queue.drain(..taken);
        if taken > 0 {
            self.serial_room.notify_all();
        }
    }

    /// Holds host input out of the serial port (a pause) or lets it in
    /// again (a resume).
    pub fn hold_serial_input(&self, held: bool) {
        let mut input = lock(&self.serial_input);
        input.held = held;
        self.fill_serial(&mut input);
    }
}

/// Feeds host input bytes to the serial port, queued behind earlier ones
/// and moved into its FIFO as the guest reads; waits while the queue is
/// full, until `stopped` says the machine has stopped.
pub fn serial_input(devices: &Devices, bytes: &[u8], stopped: &dyn Fn() -> bool) {
    let mut input = lock(&devices.serial_input);
    for chunk in bytes.chunks(SERIAL_INPUT_CAPACITY) {
        loop {
            devices.fill_serial(&mut input);
            if input.queue.len() + chunk.len() <= SERIAL_INPUT_CAPACITY || stopped() {
                break;
            }
            input = devices
                .serial_room
                .wait_timeout(input, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        input.queue.extend(chunk);
    }
    devices.fill_serial(&mut input);
}
