//! The i8042 keyboard controller at ports 0x60 (data) and 0x64
//! (status/command): enough of it for Linux's i8042 and atkbd drivers to
//! find a controller with a keyboard and no mouse port, at once, and for
//! its reset line (command 0xfe) to end the run.
//!
//! A controller that does not answer its commands costs a Linux boot
//! dearly: the driver polls the status port for each answer until a
//! 500 ms timeout (10,000 reads, each a VM exit) before it gives up on
//! the controller ("Can't read CTR while initializing i8042"). This model
//! answers as Firecracker's does (the control register, the output port,
//! an acknowledgement 0xfa for every byte sent to the keyboard, with an
//! interrupt on IRQ 1) and also answers the self-tests and the port
//! enable/disable commands. The aux (mouse) port has no device: its
//! interface test reports the clock line stuck high, as an empty PS/2
//! connector does, and bytes meant for it go to the keyboard as on an
//! AT-type controller, so Linux's aux and mux probes end at their first
//! answer instead of a timeout.
//!
//! The keyboard itself has one key event to send: Ctrl+Alt+Del (the
//! control API's `SendCtrlAltDel`, as Firecracker's), which Linux's
//! atkbd driver turns into its reboot request. The scancodes are set 2's
//! as a keyboard sends them, translated to set 1 when the control
//! register asks for translation (as firmware leaves it, and Linux keeps
//! it), each make code followed by its break code.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Port offsets from 0x60.
pub const DATA: u8 = 0;
pub const COMMAND: u8 = 4;

/// Status register bits.
const STS_OBF: u8 = 0x01; // output buffer full: a byte waits at 0x60
const STS_SYS: u8 = 0x04; // system flag: POST passed
const STS_CMD: u8 = 0x08; // last write was to 0x64 (a parameter is expected at 0x60)
const STS_UNLOCKED: u8 = 0x10; // keyboard not inhibited

/// Control register (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

/// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET: u8 = 0xfe;

/// Answers.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Interface test: "clock line stuck high", what a port with nothing
/// plugged in reads as.
const PORT_CLOCK_HIGH: u8 = 0x02;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
/// An MF2 keyboard's id (answer to 0xf2, after the ack).
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Keyboard commands (written to 0x60) with answers beyond the ack.
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_RESET: u8 = 0xff;

/// Bytes the output queue holds at most (a real controller holds one;
/// the keyboard's answers queue behind it).
const QUEUE_MAX: usize = 16;

/// A key as the keyboard reports it: its set 2 make code (prefixed with
/// 0xe0 when extended) and the set 1 code the controller translates it to.
struct Key {
    extended: bool,
    set2: u8,
    set1: u8,
}

const KEY_LEFT_CTRL: Key = Key {
    extended: false,
    set2: 0x14,
    set1: 0x1d,
};
const KEY_LEFT_ALT: Key = Key {
    extended: false,
    set2: 0x11,
    set1: 0x38,
};
const KEY_DELETE: Key = Key {
    extended: true,
    set2: 0x71,
    set1: 0x53,
};
const SCAN_EXTENDED: u8 = 0xe0;
/// Set 2's break prefix; set 1 marks a break with bit 7 instead.
const SET2_BREAK: u8 = 0xf0;
const SET1_BREAK: u8 = 0x80;

/// Key events that did not fit the output queue: the guest has not read
/// the bytes queued before them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the keyboard's output buffer is full ({queued} bytes unread by the guest): try again once it has read them")]
pub struct QueueFull {
    pub queued: usize,
}

/// What a write asks of the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The guest pulsed the reset line.
    Reset,
    /// A byte became readable and the keyboard interrupt is enabled:
    /// raise IRQ 1.
    Interrupt,
}

/// The controller's registers and output queue (also its snapshot form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042 {
    status: u8,
    control: u8,
    output_port: u8,
    /// A command waiting for its parameter at 0x60 (0: none).
    pending: u8,
    queue: VecDeque<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            status: STS_SYS | STS_UNLOCKED,
            // Keyboard interrupt on, POST passed, scancode translation on:
            // what firmware leaves behind.
            control: CTR_KBD_INT | CTR_SYS | CTR_XLATE,
            // A20 enabled, reset line released.
            output_port: 0x03,
            pending: 0,
            queue: VecDeque::new(),
        }
    }
}

impl I8042 {
    /// A read of port 0x60 + `offset`.
    /// Returns the byte and whether IRQ 1 should be raised for the next
    /// one queued.
    pub fn read(&mut self, offset: u8) -> (u8, bool) {
        match offset {
            COMMAND => (self.status, false),
            DATA => {
                // An empty buffer reads as its last contents on hardware;
                // 0 here, as in Firecracker.
                let b = self.queue.pop_front().unwrap_or(0);
                if self.queue.is_empty() {
                    self.status &= !STS_OBF;
                }
                (b, !self.queue.is_empty() && self.kbd_irq_enabled())
            }
            _ => (0xff, false),
        }
    }

    /// A write of `value` to port 0x60 + `offset`.
    pub fn write(&mut self, offset: u8, value: u8) -> Effect {
        match offset {
            COMMAND => self.command(value),
            DATA => self.data(value),
            _ => Effect::None,
        }
    }

    /// Presses and releases Ctrl+Alt+Del: Ctrl, Alt and Del down, then
    /// up in reverse order. All or nothing: refused when the sequence does
    /// not fit behind the bytes already queued.
    pub fn ctrl_alt_del(&mut self) -> Result<Effect, QueueFull> {
        let keys = [KEY_LEFT_CTRL, KEY_LEFT_ALT, KEY_DELETE];
        let mut bytes = Vec::with_capacity(12);
        for k in &keys {
            self.scancode(k, true, &mut bytes);
        }
        for k in keys.iter().rev() {
            self.scancode(k, false, &mut bytes);
        }
        if self.queue.len() + bytes.len() > QUEUE_MAX {
            return Err(QueueFull {
                queued: self.queue.len(),
            });
        }
        self.queue.extend(bytes);
        self.status |= STS_OBF;
        Ok(if self.kbd_irq_enabled() {
            Effect::Interrupt
        } else {
            Effect::None
        })
    }

    /// The bytes of one key event, in the scancode set the guest reads.
    fn scancode(&self, key: &Key, down: bool, out: &mut Vec<u8>) {
        if key.extended {
            out.push(SCAN_EXTENDED);
        }
        if self.control & CTR_XLATE != 0 {
            out.push(if down {
                key.set1
            } else {
                key.set1 | SET1_BREAK
            });
        } else {
            if !down {
                out.push(SET2_BREAK);
            }
            out.push(key.set2);
        }
    }

    /// Whether bytes wait in the output queue and the keyboard interrupt
    /// is on: a restored machine raises IRQ 1 again for them (the edge
    /// that announced them may have been lost with the vCPUs' state).
    pub fn wants_interrupt(&self) -> bool {
        !self.queue.is_empty() && self.kbd_irq_enabled()
    }

    fn kbd_irq_enabled(&self) -> bool {
        self.control & CTR_KBD_INT != 0
    }

    /// Replaces the output with `bytes` (a command's answer).
    fn answer(&mut self, bytes: &[u8]) {
        self.queue.clear();
        self.queue.extend(bytes.iter().take(QUEUE_MAX));
        if self.queue.is_empty() {
            self.status &= !STS_OBF;
        } else {
            self.status |= STS_OBF;
        }
    }

    fn command(&mut self, cmd: u8) -> Effect {
        self.status |= STS_CMD;
        self.pending = 0;
        match cmd {
            CMD_READ_CTR => self.answer(&[self.control]),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending = cmd,
            CMD_READ_OUTP => self.answer(&[self.output_port]),
            CMD_SELF_TEST => {
                // A self-test leaves the controller as after power-on.
                self.answer(&[SELF_TEST_OK]);
            }
            CMD_KBD_TEST => self.answer(&[PORT_TEST_OK]),
            CMD_AUX_TEST => self.answer(&[PORT_CLOCK_HIGH]),
            CMD_KBD_DISABLE => self.control |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.control &= !CTR_KBD_DISABLE,
            CMD_AUX_DISABLE => self.control |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.control &= !CTR_AUX_DISABLE,
            // 0xf0..=0xff pulse output lines for 6 µs; bit 0 clear pulses
            // the CPU reset line (0xfe is the common spelling).
            CMD_RESET => return Effect::Reset,
            c if c >= 0xf0 && c & 1 == 0 => return Effect::Reset,
            // Other commands (aux writes among them) have no answer.
            _ => {}
        }
        Effect::None
    }

    fn data(&mut self, b: u8) -> Effect {
        self.status &= !STS_CMD;
        match std::mem::take(&mut self.pending) {
            CMD_WRITE_CTR => {
                self.control = b;
                // The system flag follows the CTR's.
                self.status = (self.status & !STS_SYS) | (b & CTR_SYS);
                Effect::None
            }
            CMD_WRITE_OUTP => {
                self.output_port = b;
                Effect::None
            }
            _ => {
                // A byte for the keyboard: a dumb keyboard that accepts
                // every command (and its parameters) with an ack.
                match b {
                    KBD_CMD_RESET => self.answer(&[KBD_ACK, KBD_BAT_OK]),
                    KBD_CMD_GET_ID => self.answer(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
                    KBD_CMD_ECHO => self.answer(&[KBD_ECHO]),
                    _ => self.answer(&[KBD_ACK]),
                }
                if self.kbd_irq_enabled() {
                    Effect::Interrupt
                } else {
                    Effect::None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_data(k: &mut I8042) -> u8 {
        k.read(DATA).0
    }

    #[test]
    fn answers_linux_probe_commands() {
        let mut k = I8042::default();
        assert_eq!(k.read(COMMAND).0 & STS_OBF, 0);
        assert_eq!(k.write(COMMAND, CMD_READ_CTR), Effect::None);
        assert_ne!(k.read(COMMAND).0 & STS_OBF, 0);
        assert_eq!(read_data(&mut k), CTR_KBD_INT | CTR_SYS | CTR_XLATE);
        assert_eq!(k.read(COMMAND).0 & STS_OBF, 0);

        k.write(COMMAND, CMD_WRITE_CTR);
        assert_ne!(k.read(COMMAND).0 & STS_CMD, 0);
        k.write(DATA, 0x45);
        k.write(COMMAND, CMD_READ_CTR);
        assert_eq!(read_data(&mut k), 0x45);

        k.write(COMMAND, CMD_AUX_DISABLE);
        k.write(COMMAND, CMD_READ_CTR);
        assert_eq!(read_data(&mut k), 0x45 | CTR_AUX_DISABLE);
        k.write(COMMAND, CMD_AUX_ENABLE);
        k.write(COMMAND, CMD_KBD_DISABLE);
        k.write(COMMAND, CMD_READ_CTR);
        assert_eq!(read_data(&mut k), 0x45 | CTR_KBD_DISABLE);

        k.write(COMMAND, CMD_SELF_TEST);
        assert_eq!(read_data(&mut k), SELF_TEST_OK);
        k.write(COMMAND, CMD_KBD_TEST);
        assert_eq!(read_data(&mut k), PORT_TEST_OK);
        k.write(COMMAND, CMD_AUX_TEST);
        assert_eq!(read_data(&mut k), PORT_CLOCK_HIGH);

        k.write(COMMAND, CMD_WRITE_OUTP);
        k.write(DATA, 0xdd);
        k.write(COMMAND, CMD_READ_OUTP);
        assert_eq!(read_data(&mut k), 0xdd);
    }

    #[test]
    fn keyboard_bytes_are_acked_with_an_interrupt() {
        let mut k = I8042::default();
        assert_eq!(k.write(DATA, 0xf4), Effect::Interrupt);
        assert_eq!(k.read(DATA), (KBD_ACK, false));
        assert_eq!(k.write(DATA, KBD_CMD_GET_ID), Effect::Interrupt);
        // Each read with more queued asks for another interrupt.
        assert_eq!(k.read(DATA), (KBD_ACK, true));
        assert_eq!(k.read(DATA), (KBD_ID[0], true));
        assert_eq!(k.read(DATA), (KBD_ID[1], false));
        // With the keyboard interrupt off, the ack is polled.
        k.write(COMMAND, CMD_WRITE_CTR);
        k.write(DATA, CTR_SYS);
        assert_eq!(k.write(DATA, KBD_CMD_RESET), Effect::None);
        assert_eq!(read_data(&mut k), KBD_ACK);
        assert_eq!(read_data(&mut k), KBD_BAT_OK);
    }

    #[test]
    fn ctrl_alt_del_in_set_1_and_set_2() {
        let mut k = I8042::default();
        assert!(!k.wants_interrupt());
        assert_eq!(k.ctrl_alt_del(), Ok(Effect::Interrupt));
        assert!(k.wants_interrupt());
        let mut got = Vec::new();
        while k.read(COMMAND).0 & STS_OBF != 0 {
            got.push(read_data(&mut k));
        }
        // Translated (the firmware default): set 1 make and break codes.
        assert_eq!(got, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        // Untranslated, with the keyboard interrupt off: set 2, polled.
        k.write(COMMAND, CMD_WRITE_CTR);
        k.write(DATA, CTR_SYS);
        assert_eq!(k.ctrl_alt_del(), Ok(Effect::None));
        assert!(!k.wants_interrupt());
        let got: Vec<u8> = (0..11).map(|_| read_data(&mut k)).collect();
        assert_eq!(
            got,
            [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
        assert_eq!(k.read(COMMAND).0 & STS_OBF, 0);
        // A guest that reads nothing fills the queue: the next sequence
        // is refused whole, not cut.
        k.ctrl_alt_del().unwrap();
        assert_eq!(k.ctrl_alt_del(), Err(QueueFull { queued: 11 }));
        assert_eq!((0..11).map(|_| read_data(&mut k)).count(), 11);
        assert_eq!(k.read(COMMAND).0 & STS_OBF, 0);
    }

    #[test]
    fn reset_pulses_and_nothing_else_reset() {
        let mut k = I8042::default();
        assert_eq!(k.write(COMMAND, CMD_RESET), Effect::Reset);
        assert_eq!(k.write(COMMAND, 0xf0), Effect::Reset);
        assert_eq!(k.write(COMMAND, 0xff), Effect::None);
        assert_eq!(k.write(DATA, CMD_RESET), Effect::Interrupt);
        assert_eq!(k.write(COMMAND, 0xd4), Effect::None);
    }
}
