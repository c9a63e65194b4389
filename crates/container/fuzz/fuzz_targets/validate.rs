//! The checks that keep a config.json from reaching the host (cgroupsPath,
//! sysctls and their namespaces) must never accept one that would. The
//! invariant below is written from the rules, not from the validator's
//! code: for every config the validator accepts,
//! - the cgroup is a proper descendant of the hierarchy root, reached
//!   without `..`;
//! - every sysctl names a file below /proc/sys and belongs to a namespace
//!   the container has and does not share with the runtime (namespace
//!   paths below /host play the runtime's own).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::LinuxNamespaceType;
use std::path::{Component, Path};

/// Namespace files below /host are the runtime's own.
fn fake_same_ns(_kind: &str, p: &Path) -> std::io::Result<bool> {
    Ok(p.starts_with("/host"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = container::spec::parse(data, Path::new("config.json")) else {
        return;
    };
    let Some(linux) = spec.linux() else {
        return;
    };
    if let Ok(path) = container::cgroups::resolve_path(linux.cgroups_path().as_deref(), "fuzz-id") {
        let comps: Vec<Component> = Path::new(&path).components().collect();
        assert_eq!(comps.first(), Some(&Component::RootDir), "{path:?}");
        assert!(comps.len() >= 2, "the hierarchy root accepted: {path:?}");
        assert!(
            comps[1..].iter().all(|c| matches!(c, Component::Normal(_))),
            "{path:?}"
        );
        assert!(!path.contains("//") && !path.ends_with('/'), "{path:?}");
        if let Some(given) = linux.cgroups_path() {
            // Nothing the input named above its own start survives.
            assert!(
                !given.components().any(|c| c == Component::ParentDir),
                "{given:?} accepted as {path:?}"
            );
        }
    }
    if container::spec::check_sysctls(&spec, &fake_same_ns).is_err() {
        return;
    }
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let own = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .find(|n| n.typ() == t)
            .is_some_and(|n| n.path().as_ref().is_none_or(|p| !p.starts_with("/host")))
    };
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        let file = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(
            !key.contains('/')
                && !key.contains('\0')
                && file.components().count() == 4 + key.matches('.').count()
                && file
                    .components()
                    .skip(3)
                    .all(|c| matches!(c, Component::Normal(_))),
            "sysctl {key:?} leaves /proc/sys"
        );
        let ipc = [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ];
        let ok = if ipc.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            own(LinuxNamespaceType::Ipc)
        } else if key.starts_with("net.") {
            own(LinuxNamespaceType::Network)
        } else if key == "kernel.domainname" {
            own(LinuxNamespaceType::Uts)
        } else {
            false
        };
        assert!(ok, "sysctl {key:?} accepted with namespaces {namespaces:?}");
    }
});
