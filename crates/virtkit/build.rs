//! Link options for the binaries.
//!
//! Relative relocations are packed (DT_RELR) where the linker can: the
//! binaries are position-independent and carry about 21,000 of them,
//! 500 KB of `.rela.dyn` that the dynamic loader reads at every start
//! (and that stays resident), against a few KB packed. glibc loads
//! DT_RELR since 2.36; LLD (which rustc links x86-64 Linux with since
//! 1.90) writes it since 15, GNU ld since 2.38. The test asks the C
//! compiler driver's linker, the older of the two here: where it lacks
//! the option, the plain table is kept.
//!
//! `startup.ld` (made by `scripts/startup-order.sh`) gathers the
//! functions a VM's start and stop run at the front of the code, so that
//! a short-lived monitor maps a dozen 64 KB windows of the binary instead
//! of thirty-odd. It only adds an output section before `.text` (`INSERT
//! BEFORE`), which LLD and GNU ld both understand; a name in it that no
//! longer exists matches nothing.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup.ld");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("linux-gnu") {
        return;
    }
    if linker_packs_relocs() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let script = Path::new(&manifest).join("startup.ld");
    if script.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}

/// Whether the linker of the C compiler driver rustc links through
/// (`cc`) knows `-z pack-relative-relocs` (GNU ld lists it in its help).
fn linker_packs_relocs() -> bool {
    Command::new("cc")
        .args(["-Wl,--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}
