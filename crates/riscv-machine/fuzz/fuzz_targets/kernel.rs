//! Arbitrary bytes as a kernel and as a firmware file: identification
//! (Image, gzip Image, ELF, foreign kernels), ELF segment parsing and the
//! RAM fit checks the board applies. Any input must give a value or a
//! LoadError, never a panic, a hang or an allocation beyond the loader's cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riscv_machine::loader::{self, FirmwareKind, KernelKind};

const RAM_BASE: u64 = 0x8000_0000;
const RAM_SIZE: u64 = 64 << 20;

fn fits(prog: &loader::ElfProgram) {
    for seg in &prog.segments {
        let total = seg.data.len() as u64 + seg.zero;
        let _ = loader::check_fits("fuzz", seg.addr, total, RAM_BASE, RAM_SIZE);
    }
}

fuzz_target!(|data: &[u8]| {
    match loader::identify_kernel("fuzz", data.to_vec()) {
        Ok(KernelKind::Elf(elf)) => {
            if let Ok(prog) = loader::parse_elf("fuzz", &elf) {
                fits(&prog);
            }
        }
        Ok(KernelKind::Image(image, hdr)) => {
            let size = hdr.image_size.max(image.len().unwrap_or(0));
            let _ = loader::check_fits("fuzz", RAM_BASE + (2 << 20), size, RAM_BASE, RAM_SIZE);
        }
        Err(_) => {}
    }
    if let Ok(FirmwareKind::Elf(prog)) = loader::identify_firmware("fuzz", data) {
        fits(&prog);
    }
});
