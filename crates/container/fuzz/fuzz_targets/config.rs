//! config.json from an untrusted bundle: parsing and validation, then the
//! pure steps of create that read the spec before any syscall (seccomp
//! compilation, cgroup v2 device programs, mount options, rootfs
//! propagation), and the `exec --process` JSON. Any input must give Ok
//! or an error, never a panic, hang or huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = container::spec::parse(data, Path::new("config.json")) {
        if let Some(linux) = spec.linux() {
            if let Some(s) = linux.seccomp() {
                let _ = container::seccomp::compile(s);
            }
            // cgroup v2 device rules become an eBPF program.
            if let Some(d) = linux.resources().as_ref().and_then(|r| r.devices().as_ref()) {
                if let Ok(rules) = container::cgroups::devfilter::rules_for(d) {
                    let _ = container::cgroups::devfilter::program(&rules);
                }
            }
            if let Some(p) = linux.rootfs_propagation() {
                let _ = container::rootfs::propagation_flags(p);
            }
        }
        for m in spec.mounts().iter().flatten() {
            if let Some(o) = m.options() {
                let _ = container::rootfs::parse_options(o);
            }
        }
        // What the runtime stores and rereads must round-trip.
        let again = serde_json::to_vec(&spec).expect("a parsed spec serializes");
        container::spec::parse(&again, Path::new("state/config.json"))
            .expect("a stored spec parses again");
    }
    let _ = serde_json::from_slice::<oci_spec::runtime::Process>(data);
});
