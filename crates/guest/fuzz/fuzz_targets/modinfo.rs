//! ELF section parsing of kernel modules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = guest::modules::modinfo(data, "fuzz.ko");
});
