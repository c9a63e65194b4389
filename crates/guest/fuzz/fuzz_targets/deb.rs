//! The ar container of .deb files and the decompressors behind it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = guest::deb::ar_members(&mut std::io::Cursor::new(data), "fuzz.deb");
    for name in ["x.xz", "x.zst", "x.gz"] {
        let _ = guest::deb::decompress_all(name, data, 1 << 20, "fuzz");
    }
});
