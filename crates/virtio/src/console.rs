//! virtio-console (virtio 1.2, 5.3) with one port (no MULTIPORT): queue 0
//! carries host-to-guest bytes, queue 1 guest-to-host bytes.
//!
//! The host side is abstract: output goes to any `Write` (stdout, a pipe,
//! a test buffer), input is pushed through a [`ConsoleHost`] handle by
//! whoever owns the terminal (the board's stdin thread decides whether a
//! key goes to the UART or here, and handles the escape keys).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::blk::copy_config;
use crate::queue::{
    collect_chain, drain_queue, read_segments, write_segments, ActivateContext, Completion,
    DeviceSignals, QueueHandler, VirtioDevice, WorkerEvents,
};
use crate::{device_type, features, Result};

const QUEUE_SIZE: u16 = 64;
const RX: usize = 0;
const TX: usize = 1;

/// Host-to-guest bytes buffered while the guest has no receive buffers
/// posted. [`ConsoleHost::send`] blocks when this is full, so a guest that
/// never reads cannot make the host buffer without bound.
pub const MAX_PENDING_INPUT: usize = 64 << 10;

/// Guest-to-host bytes taken from one transmit chain. Linux sends at most a
/// page per buffer; the cap bounds the work a hostile chain can cause (the
/// rest of the chain is dropped).
pub const MAX_TX_CHAIN_BYTES: u64 = 1 << 20;

/// Descriptors per chain (Linux uses one).
const MAX_CONSOLE_DESCRIPTORS: usize = 64;

/// Copy granularity between guest memory and the host streams.
const CHUNK: usize = 4096;

const F_SIZE: u32 = 0;
const F_EMERG_WRITE: u32 = 2;

/// Offset of emerg_write in the configuration space.
const EMERG_WRITE_OFFSET: u64 = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks stays consistent even if a holder
    // panicked, so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct InputState {
    pending: VecDeque<u8>,
    /// Wakes the running worker to deliver input; None while not active.
    events: Option<Arc<WorkerEvents>>,
    /// The device is gone: senders stop waiting.
    closed: bool,
}

struct Shared {
    input: Mutex<InputState>,
    space: Condvar,
    size: Mutex<Option<(u16, u16)>>,
    signals: Mutex<Option<Arc<DeviceSignals>>>,
    output: Mutex<Box<dyn Write + Send>>,
}

/// The host's end of a console: push input, resize.
#[derive(Clone)]
pub struct ConsoleHost {
    shared: Arc<Shared>,
}

impl ConsoleHost {
    /// Queues all of `bytes` for the guest, waiting while
    /// [`MAX_PENDING_INPUT`] bytes are already waiting. Returns false if the
    /// console device is gone (the bytes are dropped).
    pub fn send(&self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        let mut st = lock(&self.shared.input);
        while !rest.is_empty() {
            if st.closed {
                return false;
            }
            let room = MAX_PENDING_INPUT - st.pending.len();
            if room == 0 {
                st = self
                    .shared
                    .space
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let n = room.min(rest.len());
            st.pending.extend(&rest[..n]);
            rest = &rest[n..];
            if let Some(ev) = &st.events {
                ev.kick(RX);
            }
        }
        true
    }

    /// Queues as much of `bytes` as fits without waiting; returns how many.
    pub fn try_send(&self, bytes: &[u8]) -> usize {
        let mut st = lock(&self.shared.input);
        if st.closed {
            return 0;
        }
        let n = (MAX_PENDING_INPUT - st.pending.len()).min(bytes.len());
        st.pending.extend(&bytes[..n]);
        if n > 0 {
            if let Some(ev) = &st.events {
                ev.kick(RX);
            }
        }
        n
    }

    /// Sets the console size the guest sees (columns, rows) and tells the
    /// driver. Only meaningful if the console was created with a size.
    pub fn resize(&self, cols: u16, rows: u16) {
        let mut size = lock(&self.shared.size);
        if size.is_none() {
            return;
        }
        *size = Some((cols, rows));
        drop(size);
        if let Some(s) = lock(&self.shared.signals).as_ref() {
            s.signal_config_change();
        }
    }

    /// Spawns a thread that copies `reader` (e.g. stdin) into the console
    /// until end of file, a read error, or the device going away. The thread
    /// is detached: a blocking read cannot be interrupted portably, so it
    /// ends at the reader's next byte or EOF after the device is dropped.
    pub fn spawn_reader<R: std::io::Read + Send + 'static>(
        &self,
        mut reader: R,
    ) -> std::io::Result<()> {
        let host = self.clone();
        std::thread::Builder::new()
            .name("virtio-console-in".into())
            .spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if !host.send(&buf[..n]) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(())
    }
}

/// The console device.
pub struct Console {
    shared: Arc<Shared>,
    has_size: bool,
    max_sizes: [u16; 2],
}

impl Console {
    /// A console writing guest output to `output`; `size` (columns, rows)
    /// offers VIRTIO_CONSOLE_F_SIZE. Returns the device and the host's
    /// handle for input and resizing.
    pub fn new(output: Box<dyn Write + Send>, size: Option<(u16, u16)>) -> (Console, ConsoleHost) {
        let shared = Arc::new(Shared {
            input: Mutex::new(InputState {
                pending: VecDeque::new(),
                events: None,
                closed: false,
            }),
            space: Condvar::new(),
            size: Mutex::new(size),
            signals: Mutex::new(None),
            output: Mutex::new(output),
        });
        (
            Console {
                shared: shared.clone(),
                has_size: size.is_some(),
                max_sizes: [QUEUE_SIZE; 2],
            },
            ConsoleHost { shared },
        )
    }

    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        if let Some((cols, rows)) = *lock(&self.shared.size) {
            c[0..2].copy_from_slice(&cols.to_le_bytes());
            c[2..4].copy_from_slice(&rows.to_le_bytes());
        }
        // max_nr_ports (4..8) only with MULTIPORT; emerg_write (8..12) is
        // write-only.
        c
    }

    fn detach(&self) {
        lock(&self.shared.input).events = None;
        *lock(&self.shared.signals) = None;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.input);
        st.closed = true;
        st.events = None;
        self.shared.space.notify_all();
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn device_features(&self) -> u64 {
        let mut f = 1 << features::VERSION_1
            | 1 << features::RING_INDIRECT_DESC
            | 1 << features::RING_EVENT_IDX
            | 1 << F_EMERG_WRITE;
        if self.has_size {
            f |= 1 << F_SIZE;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_write: the low byte of a 32-bit store is one character
        // (used by the kernel before the queues work, e.g. in a panic).
        if offset == EMERG_WRITE_OFFSET && !data.is_empty() {
            let mut out = lock(&self.shared.output);
            // A console whose host end is gone has nowhere to report to.
            let _ = out.write_all(&data[..1]);
            let _ = out.flush();
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<Box<dyn QueueHandler>> {
        lock(&self.shared.input).events = Some(ctx.events.clone());
        *lock(&self.shared.signals) = Some(ctx.signals.clone());
        Ok(Box::new(ConsoleHandler {
            shared: self.shared.clone(),
            mem: ctx.mem,
            signals: ctx.signals,
            buf: vec![0; CHUNK],
        }))
    }

    fn reset(&mut self) {
        self.detach();
    }

    fn save_state(&self) -> crate::persist::DeviceState {
        crate::persist::DeviceState::Console {
            pending_input: lock(&self.shared.input).pending.iter().copied().collect(),
            size: *lock(&self.shared.size),
        }
    }

    fn restore_state(
        &mut self,
        state: &crate::persist::DeviceState,
    ) -> std::result::Result<(), crate::persist::PersistError> {
        let crate::persist::DeviceState::Console {
            pending_input,
            size,
        } = state
        else {
            return Err(crate::persist::wrong_state(device_type::CONSOLE, state));
        };
        if pending_input.len() > MAX_PENDING_INPUT {
            return Err(crate::persist::PersistError::Mismatch {
                device_type: device_type::CONSOLE,
                what: format!(
                    "{} bytes of pending input, over the {MAX_PENDING_INPUT}-byte limit",
                    pending_input.len()
                ),
            });
        }
        if size.is_some() != self.has_size {
            return Err(crate::persist::PersistError::Mismatch {
                device_type: device_type::CONSOLE,
                what: "the console size feature differs from the snapshot's".into(),
            });
        }
        lock(&self.shared.input).pending = pending_input.iter().copied().collect();
        *lock(&self.shared.size) = *size;
        Ok(())
    }
}

struct ConsoleHandler {
    shared: Arc<Shared>,
    mem: GuestMemoryMmap,
    signals: Arc<DeviceSignals>,
    buf: Vec<u8>,
}

impl ConsoleHandler {
    fn transmit(&mut self, q: &mut Queue) -> Result<()> {
        let mem = &self.mem;
        let buf = &mut self.buf;
        let mut out = lock(&self.shared.output);
        drain_queue(TX, q, mem, &self.signals, |chain| {
            let Ok(bufs) = collect_chain(mem, chain, MAX_CONSOLE_DESCRIPTORS) else {
                return Completion::Used(0);
            };
            let len = bufs.readable_len().min(MAX_TX_CHAIN_BYTES);
            let mut off = 0;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                match read_segments(mem, &bufs.readable, off, &mut buf[..n]) {
                    Ok(r) if r == n => {}
                    _ => break,
                }
                // Host output errors (a closed pipe) must not stall the
                // guest: its bytes are consumed either way.
                let _ = out.write_all(&buf[..n]);
                off += n as u64;
            }
            Completion::Used(0)
        })?;
        let _ = out.flush();
        Ok(())
    }

    fn receive(&mut self, q: &mut Queue) -> Result<()> {
        let mem = &self.mem;
        let shared = &self.shared;
        let buf = &mut self.buf;
        drain_queue(RX, q, mem, &self.signals, |chain| {
            let mut st = lock(&shared.input);
            if st.pending.is_empty() {
                return Completion::NotNow;
            }
            let Ok(bufs) = collect_chain(mem, chain, MAX_CONSOLE_DESCRIPTORS) else {
                return Completion::Used(0);
            };
            let room = bufs.writable_len().min(buf.len() as u64) as usize;
            let n = room.min(st.pending.len());
            for (dst, src) in buf[..n].iter_mut().zip(st.pending.drain(..n)) {
                *dst = src;
            }
            shared.space.notify_all();
            drop(st);
            match write_segments(mem, &bufs.writable, 0, &buf[..n]) {
                Ok(w) => Completion::Used(w as u32),
                Err(_) => Completion::Used(0),
            }
        })
    }
}

impl QueueHandler for ConsoleHandler {
    fn process(&mut self, queues: &mut [Queue], pending: u32) -> Result<()> {
        // RX is also kicked by ConsoleHost when input arrives.
        if pending & (1 << TX) != 0 {
            if let Some(q) = queues.get_mut(TX) {
                self.transmit(q)?;
            }
        }
        if pending & (1 << RX) != 0 {
            if let Some(q) = queues.get_mut(RX) {
                self.receive(q)?;
            }
        }
        Ok(())
    }
}
