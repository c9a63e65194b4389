//! Virtio devices without a vCPU exit per request: the guest's
//! QueueNotify writes land in KVM ioeventfds, and the device interrupts
//! through a KVM irqfd, so a device's own thread does the work.
//!
//! Each virtio slot has one relay thread that waits (epoll) on
//!
//! * one ioeventfd per queue (KVM signals it when the guest writes the
//!   queue's index to QueueNotify, without leaving the guest); the relay
//!   passes it to the transport, whose worker thread does the I/O;
//! * a stop eventfd.
//!
//! The device interrupts through a plain irqfd: each rise of its
//! interrupt status is an edge on its IOAPIC pin (described as edge
//! triggered in ACPI), as Firecracker does. The guest's handler reads the
//! status, acknowledges it and then goes through the used rings, so what
//! arrives before the acknowledgement is handled by that interrupt and
//! what arrives after it raises a new edge. (A level-triggered line with a
//! KVM resampler did the same with an extra eventfd, but registering a
//! resampler waits for an SRCU grace period: 6 ms of every start here.)

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm::IrqLine;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::{VirtioSlot, QUEUE_NOTIFY};
use crate::{Error, Result};

/// An edge-triggered IOAPIC pin driven through a KVM irqfd.
pub struct IrqFdLine {
    level: AtomicBool,
    irqfd: EventFd,
}

impl IrqFdLine {
    /// Registers a new irqfd for `gsi` with `vm`.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Arc<IrqFdLine>> {
        let line = IrqFdLine {
            level: AtomicBool::new(false),
            irqfd: EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?,
        };
        vm.register_irqfd(&line.irqfd, gsi)
            .map_err(|e| Error::Kvm {
                what: "KVM_IRQFD",
                source: e,
            })?;
        Ok(Arc::new(line))
    }
}

impl IrqLine for IrqFdLine {
    fn set_level(&self, level: bool) {
        // A rise is an edge (KVM pulses the pin and wakes a halted vCPU);
        // lowering needs no KVM call.
        if !self.level.swap(level, Ordering::SeqCst) && level {
            let _ = self.irqfd.write(1);
        }
    }
}

/// The relay thread of one slot; stopped and joined on drop.
pub struct Relay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Registers an ioeventfd for each of `queues` QueueNotify values of
/// `slot` and starts its relay thread.
pub fn start_relay(vm: &VmFd, slot: Arc<VirtioSlot>, queues: usize) -> Result<Relay> {
    let epoll = Epoll::new().map_err(|e| Error::Io("epoll_create", e))?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    let mut kicks = Vec::with_capacity(queues);
    for q in 0..queues {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        vm.register_ioevent(
            &fd,
            &IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY),
            q as u32,
        )
        .map_err(|e| Error::Kvm {
            what: "KVM_IOEVENTFD",
            source: e,
        })?;
        kicks.push(fd);
    }
    // Tokens: 0..queues the kicks, queues the stop.
    let add = |fd: i32, token: usize| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token as u64),
            )
            .map_err(|e| Error::Io("epoll_ctl", e))
    };
    for (q, fd) in kicks.iter().enumerate() {
        add(fd.as_raw_fd(), q)?;
    }
    add(stop.as_raw_fd(), queues)?;
    let thread = std::thread::Builder::new()
        .name("virtio-relay".into())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); queues + 1];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for ev in &events[..n] {
                    let token = ev.data() as usize;
                    if token < queues {
                        let _ = kicks[token].read();
                        let idx = (token as u32).to_le_bytes();
                        slot.transport
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .write(QUEUE_NOTIFY, &idx);
                    } else {
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::Io("spawning the virtio relay thread", e))?;
    Ok(Relay {
        stop,
        thread: Some(thread),
    })
}
