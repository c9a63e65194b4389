//! The start-up layout of `crates/virtkit/startup.ld` (see
//! `scripts/startup-order.sh`): the binary has it, and the names it lists
//! still exist. Renamed or removed functions silently fall back to their
//! usual place in the code, and the monitor's start maps more of the
//! binary again; this test is what notices.

use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::BTreeSet;

/// The workspace's crates, as the first component of a legacy symbol.
const OURS: &[&str] = &[
    "virtkit",
    "vmm",
    "x86_machine",
    "riscv_machine",
    "riscv",
    "virtio",
    "net",
    "image",
    "container",
    "guest",
    "linux_user",
];

/// The function names (section name without `.text.` and the wildcard)
/// the script lists.
fn listed() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/startup.ld");
    let text = std::fs::read_to_string(path).expect("read startup.ld");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("*(.text."))
        .filter_map(|l| l.split('*').next())
        .filter(|n| n.starts_with("_ZN") || n.starts_with("_R"))
        .map(str::to_string)
        .collect()
}

/// The crate a legacy (`_ZN`) symbol name starts with.
fn legacy_crate(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("_ZN")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let len: usize = rest[..digits].parse().ok()?;
    rest.get(digits..digits + len)
}

#[test]
fn startup_functions_come_first_and_still_exist() {
    let names = listed();
    assert!(
        names.len() > 100,
        "startup.ld lists only {} functions",
        names.len()
    );

    let data = std::fs::read(env!("CARGO_BIN_EXE_virtkit")).expect("read the binary");
    let file = object::File::parse(&*data).expect("parse the binary");
    let section = file
        .section_by_name(".text.vkstart")
        .expect("the binary has no .text.vkstart: build.rs did not link startup.ld");
    let (start, end) = (section.address(), section.address() + section.size());
    let symbols: BTreeSet<(String, u64)> = file
        .symbols()
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
        .collect();
    let main = symbols
        .iter()
        .find(|(n, _)| n.starts_with("_ZN7virtkit4main17h"))
        .expect("virtkit::main has a symbol");
    assert!(
        (start..end).contains(&main.1),
        "virtkit::main at {:#x} is outside .text.vkstart ({start:#x}..{end:#x})",
        main.1
    );

    // A listed name matches the symbols it is a prefix of.
    let exists = |prefix: &str| {
        symbols
            .range((prefix.to_string(), 0)..)
            .next()
            .is_some_and(|(n, _)| n.starts_with(prefix))
    };
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| legacy_crate(n).is_some_and(|c| OURS.contains(&c)))
        .collect();
    assert!(
        ours.len() > 20,
        "startup.ld lists only {} of the workspace's functions",
        ours.len()
    );
    let gone: Vec<&&String> = ours.iter().filter(|n| !exists(n)).collect();
    assert!(
        gone.len() * 5 <= ours.len(),
        "{} of the {} workspace functions in startup.ld no longer exist (e.g. {:?}): \
         run scripts/startup-order.sh",
        gone.len(),
        ours.len(),
        &gone[..gone.len().min(5)]
    );
}
