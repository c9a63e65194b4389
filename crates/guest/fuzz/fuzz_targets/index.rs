//! Release and Packages parsing (text from the network, though signed).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = guest::index::parse_release(text);
        if let Ok(found) = guest::index::find_packages(text, &["a", "busybox-static"]) {
            for p in found.values() {
                let _ = p.depends_names();
            }
        }
        let _ = guest::sources::parse_deb822(text, std::path::Path::new("f"));
        let _ = guest::sources::parse_one_line(text, std::path::Path::new("f"));
    }
});
