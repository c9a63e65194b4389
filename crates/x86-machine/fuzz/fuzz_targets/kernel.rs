//! Arbitrary bytes as an x86-64 kernel: identification (ELF, bzImage,
//! foreign kernels), the bzImage header and ELF segment checks, loading
//! into a small guest RAM through linux-loader, and the zero page with an
//! initrd. Any input must load or give an Error, never a panic or a write
//! outside guest RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x86_machine::boot::{self, BootSetup};

const MEM: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let ram = vmm::GuestRam::new(0, MEM as usize).unwrap();
    let mem = ram.memory();
    let kernel = boot::BootFile::from(data.to_vec());
    if let Ok(k) = boot::load_kernel(mem, MEM, &kernel, "fuzz") {
        assert!(k.end <= MEM, "{k:?}");
        let initrd = boot::BootFile::from(data[..data.len().min(4096)].to_vec());
        let _ = boot::write_boot_params(
            mem,
            &k,
            &BootSetup {
                mem_size: MEM,
                cmdline: "console=ttyS0",
                initrd: Some(&initrd),
            },
        );
    }
});
