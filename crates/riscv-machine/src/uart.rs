//! A 16550A UART as Linux's 8250 driver expects it, plus the byte queue the
//! SBI console shares with it.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the
//! console output, so THR is always empty again by the time the guest looks.
//! Received bytes come from the host terminal's reader thread.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::mmio::MmioDevice;
use vmm::IrqLine;

// Register offsets (reg-shift 0).
const RBR_THR_DLL: u64 = 0;
const IER_DLM: u64 = 1;
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;

const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const LCR_DLAB: u8 = 0x80;
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

/// How many received bytes wait in the console queue before the terminal
/// reader is made to wait: bounds memory when the guest does not read.
const INPUT_CAPACITY: usize = 4096;

/// The console's byte streams: guest output to the host, host input to the
/// guest. Shared by the UART and the SBI console calls.
pub struct Console {
    out: Mutex<Box<dyn Write + Send>>,
    input: Mutex<VecDeque<u8>>,
    room: Condvar,
    /// Called (without locks held) when input arrives, so the UART can
    /// raise its interrupt.
    notify: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console {
            out: Mutex::new(out),
            input: Mutex::new(VecDeque::new()),
            room: Condvar::new(),
            notify: Mutex::new(None),
        }
    }

    fn input(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.input.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes guest output to the host.
    pub fn write(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed terminal or pipe must not stop the guest: drop the output.
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    /// Queues host input for the guest, waiting while the queue is full.
    pub fn push_input(&self, bytes: &[u8]) {
        for &b in bytes {
            let mut q = self.input();
            while q.len() >= INPUT_CAPACITY {
                q = self.room.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.push_back(b);
        }
        let n = self
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(n) = n {
            n();
        }
    }

    /// Takes one byte of input, if any.
    pub fn pop_input(&self) -> Option<u8> {
        let b = self.input().pop_front();
        if b.is_some() {
            self.room.notify_all();
        }
        b
    }

    fn has_input(&self) -> bool {
        !self.input().is_empty()
    }
}

#[derive(Default)]
struct Regs {
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr_errors: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    /// THR-empty interrupt latched (cleared by reading IIR or writing THR).
    thr_pending: bool,
    /// Byte looped back in loopback mode.
    loop_byte: Option<u8>,
    line: bool,
    /// The guest's driver has enabled the receive interrupt at least once:
    /// only then does host input show in LSR and RBR. Until then it waits
    /// "on the wire": a driver starting up clears the FIFO and reads RBR to
    /// empty it, which ate whatever the host had sent (a pipe's whole
    /// contents, sent before the guest booted).
    rx_open: bool,
}

/// The 16550A device.
pub struct Uart {
    regs: Mutex<Regs>,
    console: Arc<Console>,
    irq: Arc<dyn IrqLine>,
}

impl Uart {
    pub fn new(console: Arc<Console>, irq: Arc<dyn IrqLine>) -> Arc<Self> {
        let uart = Arc::new(Uart {
            regs: Mutex::new(Regs {
                // DCD and DSR asserted, as a connected terminal.
                msr: 0xb0,
                ..Regs::default()
            }),
            console: console.clone(),
            irq,
        });
        let weak = Arc::downgrade(&uart);
        *console.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(move || {
            if let Some(u) = weak.upgrade() {
                let mut r = u.lock();
                u.update(&mut r);
            }
        }));
        uart
    }

    fn lock(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn data_ready(&self, r: &Regs) -> bool {
        if r.mcr & MCR_LOOP != 0 {
            r.loop_byte.is_some()
        } else {
            r.rx_open && self.console.has_input()
        }
    }

    fn iir(&self, r: &Regs) -> u8 {
        if r.ier & IER_RLSI != 0 && r.lsr_errors != 0 {
            IIR_RLSI
        } else if r.ier & IER_RDI != 0 && self.data_ready(r) {
            IIR_RDI
        } else if r.ier & IER_THRI != 0 && r.thr_pending {
            IIR_THRI
        } else if r.ier & IER_MSI != 0 && r.msr & 0x0f != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    fn update(&self, r: &mut Regs) {
        let level = self.iir(r) != IIR_NO_INT;
        if level != r.line {
            r.line = level;
            self.irq.set_level(level);
        }
    }

    fn lsr(&self, r: &Regs) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT | r.lsr_errors;
        if self.data_ready(r) {
            lsr |= LSR_DR;
        }
        lsr
    }
}

impl MmioDevice for Uart {
    fn read(&self, offset: u64, _size: u8) -> u64 {
        let mut r = self.lock();
        let v = match offset {
            RBR_THR_DLL if r.lcr & LCR_DLAB != 0 => r.dll,
            RBR_THR_DLL => {
                let b = if r.mcr & MCR_LOOP != 0 {
                    r.loop_byte.take()
                } else if r.rx_open {
                    self.console.pop_input()
                } else {
                    None
                };
                b.unwrap_or(0)
            }
            IER_DLM if r.lcr & LCR_DLAB != 0 => r.dlm,
            IER_DLM => r.ier,
            IIR_FCR => {
                let iir = self.iir(&r);
                if iir == IIR_THRI {
                    r.thr_pending = false;
                }
                iir | if r.fifo { IIR_FIFO_ENABLED } else { 0 }
            }
            LCR => r.lcr,
            MCR => r.mcr,
            LSR => {
                let v = self.lsr(&r);
                r.lsr_errors = 0;
                v
            }
            MSR => {
                let v = if r.mcr & MCR_LOOP != 0 {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    let m = r.mcr;
                    ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                } else {
                    r.msr
                };
                r.msr &= 0xf0;
                v
            }
            SCR => r.scr,
            _ => 0,
        };
        self.update(&mut r);
        v as u64
    }

    fn write(&self, offset: u64, _size: u8, value: u64) {
        let v = value as u8;
        let mut r = self.lock();
        match offset {
            RBR_THR_DLL if r.lcr & LCR_DLAB != 0 => r.dll = v,
            RBR_THR_DLL => {
                if r.mcr & MCR_LOOP != 0 {
                    if r.loop_byte.replace(v).is_some() {
                        r.lsr_errors |= LSR_OE;
                    }
                } else {
                    self.console.write(&[v]);
                }
                // Sent at once: THR is empty again.
                r.thr_pending = r.ier & IER_THRI != 0;
            }
            IER_DLM if r.lcr & LCR_DLAB != 0 => r.dlm = v,
            IER_DLM => {
                let old = r.ier;
                r.ier = v & 0x0f;
                r.rx_open |= r.ier & IER_RDI != 0;
                if (old ^ r.ier) & IER_THRI != 0 {
                    // Enabling the THR-empty interrupt while THR is empty
                    // raises it at once; Linux's startup probe relies on it.
                    r.thr_pending = r.ier & IER_THRI != 0;
                }
            }
            IIR_FCR => {
                r.fifo = v & FCR_ENABLE != 0;
                // Host input is still on the wire, not in the FIFO: a
                // clear keeps it (see `rx_open`).
                if v & FCR_CLEAR_RX != 0 {
                    r.loop_byte = None;
                }
            }
            LCR => r.lcr = v,
            MCR => r.mcr = v & 0x1f,
            SCR => r.scr = v,
            _ => {}
        }
        self.update(&mut r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (Sink, Arc<Line>, Arc<Console>, Arc<Uart>) {
        let sink = Sink::default();
        let line = Arc::new(Line::default());
        let console = Arc::new(Console::new(Box::new(sink.clone())));
        let uart = Uart::new(console.clone(), line.clone());
        (sink, line, console, uart)
    }

    #[test]
    fn transmit_and_the_thre_interrupt_as_linux_probes_it() {
        let (sink, line, _c, u) = setup();
        for b in b"hi\n" {
            u.write(RBR_THR_DLL, 1, *b as u64);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(u.read(LSR, 1) as u8 & (LSR_THRE | LSR_TEMT), 0x60);
        assert!(!line.0.load(Ordering::SeqCst));
        // serial8250_do_startup: enable THRI, read LSR and IIR.
        u.write(IER_DLM, 1, IER_THRI as u64);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(IIR_FCR, 1) as u8, IIR_THRI);
        // Reading IIR acknowledged it.
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(IIR_FCR, 1) as u8, IIR_NO_INT);
        // Writing THR with THRI enabled raises it again.
        u.write(RBR_THR_DLL, 1, b'x' as u64);
        assert!(line.0.load(Ordering::SeqCst));
        u.write(IER_DLM, 1, 0);
        assert!(!line.0.load(Ordering::SeqCst));
    }

    #[test]
    fn receive_raises_rdi_until_drained() {
        let (_s, line, console, u) = setup();
        u.write(IIR_FCR, 1, (FCR_ENABLE | FCR_CLEAR_RX) as u64);
        u.write(IER_DLM, 1, IER_RDI as u64);
        assert!(!line.0.load(Ordering::SeqCst));
        console.push_input(b"ab");
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(IIR_FCR, 1) as u8, IIR_RDI | IIR_FIFO_ENABLED);
        assert_eq!(u.read(LSR, 1) as u8 & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR_THR_DLL, 1), b'a' as u64);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(RBR_THR_DLL, 1), b'b' as u64);
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(LSR, 1) as u8 & LSR_DR, 0);
    }

    #[test]
    fn input_waits_until_the_driver_opens_the_receiver() {
        let (_s, line, console, u) = setup();
        // Sent before the driver is up (a pipe into `virtkit run`).
        console.push_input(b"xy");
        assert_eq!(u.read(LSR, 1) as u8 & LSR_DR, 0);
        // Linux's startup clears the FIFO and reads RBR to empty it.
        u.write(IIR_FCR, 1, (FCR_ENABLE | FCR_CLEAR_RX) as u64);
        assert_eq!(u.read(RBR_THR_DLL, 1), 0);
        assert!(!line.0.load(Ordering::SeqCst));
        // Enabling the receive interrupt opens it: nothing was lost.
        u.write(IER_DLM, 1, IER_RDI as u64);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(u.read(RBR_THR_DLL, 1), b'x' as u64);
        // Throttled (RDI off), the data still shows in LSR.
        u.write(IER_DLM, 1, 0);
        assert_eq!(u.read(LSR, 1) as u8 & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR_THR_DLL, 1), b'y' as u64);
        assert!(u.save().rx_open);
    }

    #[test]
    fn divisor_latch_scratch_and_loopback() {
        let (sink, _l, _c, u) = setup();
        u.write(LCR, 1, 0x83);
        u.write(RBR_THR_DLL, 1, 0x12);
        u.write(IER_DLM, 1, 0x34);
        assert_eq!(u.read(RBR_THR_DLL, 1), 0x12);
        assert_eq!(u.read(IER_DLM, 1), 0x34);
        u.write(LCR, 1, 0x03);
        assert_eq!(u.read(LCR, 1), 0x03);
        assert_eq!(u.read(IER_DLM, 1), 0);
        u.write(SCR, 1, 0x5a);
        assert_eq!(u.read(SCR, 1), 0x5a);
        u.write(MCR, 1, (MCR_LOOP | 0x0a) as u64);
        u.write(RBR_THR_DLL, 1, 0x99);
        assert_eq!(u.read(LSR, 1) as u8 & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR_THR_DLL, 1), 0x99);
        assert_eq!(u.read(MSR, 1) as u8 & 0xf0, 0x90);
        assert!(sink.0.lock().unwrap().is_empty(), "loopback stays inside");
    }
}

// ---- persist: the UART's state for snapshots ----

/// The UART's registers and the console's unread input bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartState {
    pub ier: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub lsr_errors: u8,
    pub msr: u8,
    pub scr: u8,
    pub dll: u8,
    pub dlm: u8,
    pub fifo: bool,
    pub thr_pending: bool,
    pub loop_byte: Option<u8>,
    /// Host input received and not yet read by the guest.
    pub input: Vec<u8>,
    /// The driver opened the receiver (states from before this field
    /// existed were all of running guests).
    #[serde(default = "opened")]
    pub rx_open: bool,
}

fn opened() -> bool {
    true
}

impl Uart {
    /// The UART's state.
    pub fn save(&self) -> UartState {
        let r = self.lock();
        UartState {
            ier: r.ier,
            lcr: r.lcr,
            mcr: r.mcr,
            lsr_errors: r.lsr_errors,
            msr: r.msr,
            scr: r.scr,
            dll: r.dll,
            dlm: r.dlm,
            fifo: r.fifo,
            thr_pending: r.thr_pending,
            loop_byte: r.loop_byte,
            input: self.console.input().iter().copied().collect(),
            rx_open: r.rx_open,
        }
    }

    /// Restores the registers and the unread input, then drives the
    /// interrupt line to match.
    pub fn restore(&self, st: &UartState) -> Result<(), crate::snapshot::DeviceStateError> {
        if st.input.len() > INPUT_CAPACITY {
            return Err(crate::snapshot::DeviceStateError::new(
                "uart",
                format!(
                    "{} bytes of pending input, more than the {INPUT_CAPACITY}-byte queue",
                    st.input.len()
                ),
            ));
        }
        {
            let mut q = self.console.input();
            q.clear();
            q.extend(st.input.iter().copied());
        }
        let mut r = self.lock();
        r.ier = st.ier & 0x0f;
        r.lcr = st.lcr;
        r.mcr = st.mcr & 0x1f;
        r.lsr_errors = st.lsr_errors;
        r.msr = st.msr;
        r.scr = st.scr;
        r.dll = st.dll;
        r.dlm = st.dlm;
        r.fifo = st.fifo;
        r.thr_pending = st.thr_pending;
        r.loop_byte = st.loop_byte;
        r.rx_open = st.rx_open;
        // Force the line to be driven to the restored level.
        r.line = false;
        self.irq.set_level(false);
        self.update(&mut r);
        Ok(())
    }
}

#[cfg(test)]
mod persist_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
        }
    }

    #[test]
    fn uart_state_round_trips_with_pending_input_and_irq() {
        let c1 = Arc::new(Console::new(Box::new(std::io::sink())));
        let u1 = Uart::new(c1.clone(), Arc::new(Line::default()));
        u1.write(LCR, 1, 0x83);
        u1.write(RBR_THR_DLL, 1, 0x12);
        u1.write(LCR, 1, 0x03);
        u1.write(SCR, 1, 0x5a);
        u1.write(IER_DLM, 1, IER_RDI as u64);
        c1.push_input(b"xy");
        let st = u1.save();
        assert_eq!(st.input, b"xy");

        let c2 = Arc::new(Console::new(Box::new(std::io::sink())));
        let line = Arc::new(Line::default());
        let u2 = Uart::new(c2, line.clone());
        u2.restore(&st).unwrap();
        assert_eq!(u2.save(), st);
        assert!(line.0.load(Ordering::SeqCst), "RDI pending after restore");
        assert_eq!(u2.read(RBR_THR_DLL, 1), b'x' as u64);
        let mut big = st.clone();
        big.input = vec![0; INPUT_CAPACITY + 1];
        assert!(u2.restore(&big).is_err());
    }
}
