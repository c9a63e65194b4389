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
    fn reset_pulses_and_nothing_else_reset() {
        let mut k = I8042::default();
        assert_eq!(k.write(COMMAND, CMD_RESET), Effect::Reset);
        assert_eq!(k.write(COMMAND, 0xf0), Effect::Reset);
        assert_eq!(k.write(COMMAND, 0xff), Effect::None);
        assert_eq!(k.write(DATA, CMD_RESET), Effect::Interrupt);
        assert_eq!(k.write(COMMAND, 0xd4), Effect::None);
    }
}
