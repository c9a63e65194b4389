//! Arbitrary code runs in user mode without panicking the emulator: every
//! outcome is an Exit (fault, illegal instruction, ecall, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use riscv::{perm, Exit, Hart, UserSpace};

fuzz_target!(|data: &[u8]| {
    let space = UserSpace::new(24).expect("reserve");
    space
        .map_anonymous(0x1000, 0x2000, perm::R | perm::W)
        .expect("map");
    let n = data.len().min(0x1000);
    space.write(0x1000, &data[..n]).expect("write");
    space
        .set_perms(0x1000, 0x1000, perm::R | perm::W | perm::X)
        .expect("perms");
    let mut hart = Hart::new_user();
    hart.pc = 0x1000;
    hart.set_x(2, 0x2800);
    // Bounded: at most a few exits; endless loops are cut by a stop request.
    let ctl = hart.control().clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        ctl.request_stop();
    });
    for _ in 0..64 {
        match hart.run_user(&space) {
            Exit::Ecall => hart.pc += 4,
            Exit::Stopped => break,
            _ => break,
        }
    }
    stopper.join().expect("stopper");
});
