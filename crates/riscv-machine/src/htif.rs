//! HTIF, the host-target interface of the spike board: the program writes a
//! command to its `tohost` word, the host answers through `fromhost`.
//!
//! Command layout: device in bits 63..56, command in 55..48, payload in
//! 47..0. Device 0 command 0 with payload bit 0 set is "exit with status
//! payload >> 1"; with bit 0 clear the payload points at a syscall block
//! (`magic_mem`: number, then arguments) as riscv-pk and riscv-tests use
//! for `write`. Device 1 is the console: command 1 writes a byte, command 0
//! reads one.

/// A decoded `tohost` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HtifCommand {
    Exit(u64),
    Syscall(u64),
    Putchar(u8),
    Getchar,
    Unknown { device: u8, cmd: u8 },
}

/// Decodes a non-zero `tohost` value.
pub fn decode(tohost: u64) -> HtifCommand {
    let device = (tohost >> 56) as u8;
    let cmd = (tohost >> 48) as u8;
    let payload = tohost & ((1 << 48) - 1);
    match (device, cmd) {
        (0, 0) if payload & 1 == 1 => HtifCommand::Exit(payload >> 1),
        (0, 0) => HtifCommand::Syscall(payload),
        (1, 1) => HtifCommand::Putchar(payload as u8),
        (1, 0) => HtifCommand::Getchar,
        _ => HtifCommand::Unknown { device, cmd },
    }
}

/// The `fromhost` answer for `device`/`cmd` with `response`.
pub fn response(device: u8, cmd: u8, response: u64) -> u64 {
    ((device as u64) << 56) | ((cmd as u64) << 48) | (response & ((1 << 48) - 1))
}

/// Syscall numbers of the proxy (Linux's generic numbers).
pub const SYS_WRITE: u64 = 64;
pub const SYS_EXIT: u64 = 93;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_commands_of_riscv_tests_and_pk() {
        assert_eq!(decode(1), HtifCommand::Exit(0));
        assert_eq!(decode((5 << 1) | 1), HtifCommand::Exit(5));
        assert_eq!(decode(0x8000_1000), HtifCommand::Syscall(0x8000_1000));
        assert_eq!(
            decode((1 << 56) | (1 << 48) | b'A' as u64),
            HtifCommand::Putchar(b'A')
        );
        assert_eq!(decode(1 << 56), HtifCommand::Getchar);
        assert_eq!(decode(3 << 56), HtifCommand::Unknown { device: 3, cmd: 0 });
        assert_eq!(response(1, 1, 0x141), (1 << 56) | (1 << 48) | 0x141);
    }
}
