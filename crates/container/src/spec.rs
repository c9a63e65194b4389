//! config.json: loading (errors name the JSON field), validation of what the
//! runtime relies on, the default spec of `spec`, and `features`.

use crate::error::{spec_err, Context, Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// config.json files larger than this are refused before parsing: a spec is
/// a few kilobytes; this bounds what a hostile bundle can make us allocate.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Parse a spec from JSON bytes; an error names the field's JSON path.
pub fn parse(data: &[u8], path: &Path) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        Error::Config {
            path: path.to_path_buf(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            msg: e.into_inner().to_string(),
        }
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Read `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let f = std::fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
    let len = f
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    if len > MAX_CONFIG_BYTES {
        return Err(spec_err("(file)", format!("{len} bytes is too large")));
    }
    let data = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    parse(&data, &path)
}

/// Checks beyond the JSON schema: things the runtime would otherwise fail
/// on late, halfway through setting up a container.
pub fn validate(spec: &Spec) -> Result<()> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(spec_err(
            "ociVersion",
            format!("{version:?} is not a runtime-spec 1.x version"),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| spec_err("root", "missing"))?;
    if root.path().as_os_str().is_empty() {
        return Err(spec_err("root.path", "empty"));
    }
    if let Some(p) = spec.process() {
        match p.args() {
            Some(a) if !a.is_empty() => {}
            _ => return Err(spec_err("process.args", "missing or empty")),
        }
        if !p.cwd().is_absolute() {
            return Err(spec_err(
                "process.cwd",
                format!("{:?} is not an absolute path", p.cwd()),
            ));
        }
        if let Some(env) = p.env() {
            for (i, e) in env.iter().enumerate() {
                if !e.contains('=') {
                    return Err(spec_err(
                        format!("process.env[{i}]"),
                        format!("{e:?} is not KEY=VALUE"),
                    ));
                }
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(spec_err(
                format!("mounts[{i}].destination"),
                format!("{:?} is not an absolute path", m.destination()),
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if seen.contains(&ns.typ()) {
                return Err(spec_err(
                    format!("linux.namespaces[{i}].type"),
                    format!("{:?} given twice", ns.typ()),
                ));
            }
            seen.push(ns.typ());
            if let Some(p) = ns.path() {
                if !p.is_absolute() {
                    return Err(spec_err(
                        format!("linux.namespaces[{i}].path"),
                        format!("{p:?} is not an absolute path"),
                    ));
                }
            }
        }
        let has_mount_ns = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Mount);
        if !has_mount_ns {
            // runc: "unable to restrict sys entries without a private MNT
            // namespace"; the remounts would hit the caller's mounts.
            for (field, paths) in [
                ("linux.maskedPaths", linux.masked_paths()),
                ("linux.readonlyPaths", linux.readonly_paths()),
            ] {
                if paths.as_ref().is_some_and(|p| !p.is_empty()) {
                    return Err(spec_err(
                        field,
                        "needs a mount namespace (linux.namespaces has none)",
                    ));
                }
            }
        }
        let new_user = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
        if new_user {
            if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
                return Err(spec_err(
                    "linux.uidMappings",
                    "a new user namespace needs uid mappings",
                ));
            }
            if linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
                return Err(spec_err(
                    "linux.gidMappings",
                    "a new user namespace needs gid mappings",
                ));
            }
        }
        if let Some(sysctl) = linux.sysctl() {
            for k in sysctl.keys() {
                check_sysctl_name(k)?;
            }
        }
    }
    if let Some(h) = spec.hostname() {
        if h.len() > 64 {
            return Err(spec_err("hostname", "longer than 64 bytes"));
        }
    }
    Ok(())
}

/// A sysctl key must name a file below /proc/sys: dot-separated
/// non-empty components without `/` (so no `..`, no absolute path, no
/// way out of /proc/sys) and without NUL bytes.
fn check_sysctl_name(k: &str) -> Result<()> {
    let field = || format!("linux.sysctl.{k}");
    if k.is_empty() || k.split('.').any(str::is_empty) {
        return Err(spec_err(field(), "not a sysctl name (empty component)"));
    }
    if k.contains('/') || k.contains('\0') {
        return Err(spec_err(
            field(),
            "not a sysctl name (use dots, not `/`, between components)",
        ));
    }
    Ok(())
}

/// The namespaces the sysctls of runc's allow-list live in.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Answers the one question sysctl validation must ask the host: is the
/// namespace file at `path` the namespace (of kind `kind`, as named in
/// /proc/self/ns) the runtime itself is in?
pub type SameNamespace<'a> = &'a dyn Fn(&str, &Path) -> std::io::Result<bool>;

/// [`SameNamespace`] for the running process: compares device and inode
/// with /proc/self/ns/<kind>, as runc does for network namespaces.
pub fn is_current_namespace(kind: &str, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let cur = std::fs::metadata(format!("/proc/self/ns/{kind}"))?;
    let other = std::fs::metadata(path)?;
    Ok(cur.dev() == other.dev() && cur.ino() == other.ino())
}

/// Which sysctls a container may set, as runc's validator decides: only
/// those of a namespace the container does not share with the runtime.
/// Every write to /proc/sys lands in the writer's namespaces, so anything
/// else would change the host.
///
/// - IPC ones (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*) need an
///   ipc namespace, `net.*` a network namespace, `kernel.domainname` a uts
///   namespace; `kernel.hostname` is refused (the `hostname` field says
///   it); every other key is refused.
/// - A namespace joined by path counts unless it is the runtime's own
///   (runc checks that for the network only; a joined ipc or uts namespace
///   that is the host's is the host, so it is refused here too).
///
/// Runs before the container is created: nothing exists yet on failure.
pub fn check_sysctls(spec: &Spec, same_ns: SameNamespace) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let Some(sysctl) = linux.sysctl() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    // Is there a namespace of this type that is not the runtime's own?
    let separate = |t: LinuxNamespaceType, kind: &str| -> Result<bool> {
        let Some(ns) = namespaces.iter().find(|n| n.typ() == t) else {
            return Ok(false);
        };
        match ns.path() {
            None => Ok(true),
            Some(p) => same_ns(kind, p).map(|same| !same).map_err(|e| {
                spec_err(
                    "linux.namespaces",
                    format!("{kind} namespace path {}: {e}", p.display()),
                )
            }),
        }
    };
    let mut keys: Vec<&String> = sysctl.keys().collect();
    keys.sort();
    for k in keys {
        check_sysctl_name(k)?;
        let field = format!("linux.sysctl.{k}");
        let (ok, why) = if IPC_SYSCTLS.contains(&k.as_str()) || k.starts_with("fs.mqueue.") {
            (
                separate(LinuxNamespaceType::Ipc, "ipc")?,
                "is an IPC sysctl: it needs an ipc namespace of the container's own \
                 (without one it would change the host's)",
            )
        } else if k.starts_with("net.") {
            (
                separate(LinuxNamespaceType::Network, "net")?,
                "is a network sysctl: it needs a network namespace of the container's own \
                 (without one it would change the host's)",
            )
        } else if k == "kernel.domainname" {
            (
                separate(LinuxNamespaceType::Uts, "uts")?,
                "needs a uts namespace of the container's own \
                 (without one it would change the host's)",
            )
        } else if k == "kernel.hostname" {
            (
                false,
                "is not allowed: it conflicts with the `hostname` field, which sets it",
            )
        } else {
            (
                false,
                "is not namespaced: writing it would change the host for everyone \
                 (only ipc, net.* and kernel.domainname sysctls are allowed)",
            )
        };
        if !ok {
            return Err(spec_err(field, why));
        }
    }
    Ok(())
}

/// The rootfs directory, absolute.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| spec_err("root", "missing"))?;
    let p = bundle.join(root.path());
    std::fs::canonicalize(&p).ctx(|| format!("root.path {}", p.display()))
}

/// The default config.json of `spec` (the runtime-spec's example, as runc
/// writes it), optionally for rootless use.
pub fn default_spec(rootless: bool) -> Spec {
    if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    }
}

/// `features`: what this runtime implements, in the runtime-spec's format.
pub fn features_json() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": crate::rootfs::KNOWN_MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<std::collections::BTreeSet<_>>(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": crate::seccomp::ACTIONS,
                "operators": crate::seccomp::OPERATORS,
                "archs": crate::seccomp::ARCHES,
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.version": "1.2.0",
            "io.github.virtkit.runtime": "virtkit-runc",
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(json: &str) -> String {
        parse(json.as_bytes(), Path::new("config.json"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn default_spec_round_trips() {
        let s = default_spec(false);
        let data = serde_json::to_vec(&s).unwrap();
        parse(&data, Path::new("x")).unwrap();
    }

    /// A spec with these namespaces (`type` or `type=path`) and sysctls.
    fn sysctl_spec(ns: &[&str], sysctl: &[(&str, &str)]) -> Spec {
        let ns: Vec<serde_json::Value> = ns
            .iter()
            .map(|n| match n.split_once('=') {
                Some((t, p)) => serde_json::json!({"type": t, "path": p}),
                None => serde_json::json!({"type": n}),
            })
            .collect();
        let sysctl: serde_json::Map<String, serde_json::Value> = sysctl
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let j = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "r"},
            "linux": {"namespaces": ns, "sysctl": sysctl}});
        parse(&serde_json::to_vec(&j).unwrap(), Path::new("config.json")).unwrap()
    }

    /// Namespace paths under /host are the runtime's own.
    fn fake_ns(_kind: &str, p: &Path) -> std::io::Result<bool> {
        Ok(p.starts_with("/host"))
    }

    fn sysctl_err(ns: &[&str], k: &str) -> Option<String> {
        check_sysctls(&sysctl_spec(ns, &[(k, "1")]), &fake_ns)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn host_sysctls_are_refused_like_runc() {
        // Not namespaced at all: refused whatever the namespaces.
        let all = ["ipc", "network", "uts", "mount", "pid"];
        for k in [
            "vm.swappiness",
            "kernel.panic",
            "fs.file-max",
            "kernel.core_pattern",
        ] {
            let e = sysctl_err(&all, k).unwrap_or_else(|| panic!("{k} accepted"));
            assert!(e.contains(&format!("linux.sysctl.{k}")), "{e}");
            assert!(e.contains("not namespaced"), "{e}");
        }
        // IPC ones need an ipc namespace that is not the runtime's.
        for k in [
            "kernel.msgmax",
            "kernel.shm_rmid_forced",
            "fs.mqueue.msg_max",
        ] {
            assert!(sysctl_err(&["network", "uts"], k).unwrap().contains(k));
            assert!(sysctl_err(&["ipc=/host/ipc"], k).is_some(), "{k}");
            assert_eq!(sysctl_err(&["ipc"], k), None, "{k}");
            assert_eq!(sysctl_err(&["ipc=/proc/77/ns/ipc"], k), None, "{k}");
        }
        // net.* the same with a network namespace.
        let k = "net.ipv4.ip_forward";
        assert!(sysctl_err(&["ipc", "uts"], k).unwrap().contains(k));
        assert!(sysctl_err(&["network=/host/net"], k).is_some());
        assert_eq!(sysctl_err(&["network"], k), None);
        assert_eq!(sysctl_err(&["network=/run/netns/x"], k), None);
        // kernel.domainname with a uts namespace; kernel.hostname never.
        assert!(sysctl_err(&["ipc"], "kernel.domainname").is_some());
        assert_eq!(sysctl_err(&["uts"], "kernel.domainname"), None);
        assert!(sysctl_err(&all, "kernel.hostname")
            .unwrap()
            .contains("hostname"));
        // A namespace path that cannot be checked is an error, not a pass.
        let broken = |_: &str, _: &Path| -> std::io::Result<bool> {
            Err(std::io::Error::from_raw_os_error(libc::ENOENT))
        };
        let s = sysctl_spec(&["network=/nope"], &[("net.core.somaxconn", "5")]);
        assert!(check_sysctls(&s, &broken).is_err());
    }

    #[test]
    fn sysctl_names_stay_in_proc_sys() {
        for k in [
            "",
            ".",
            "..",
            "kernel..msgmax",
            ".kernel.msgmax",
            "kernel.msgmax.",
            "kernel/msgmax",
            "net.ipv4.../../../etc",
            "/etc/passwd",
            "a\0b",
        ] {
            let j = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "r"},
                "linux": {"namespaces": [{"type": "ipc"}], "sysctl": {k: "1"}}});
            let e = parse(&serde_json::to_vec(&j).unwrap(), Path::new("c"));
            assert!(e.is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":"zero","gid":0},"args":["sh"]}}"#,
        );
        assert!(e.contains("process.user.uid"), "{e}");
        let e = err_of(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}}"#,
        );
        assert!(e.contains("process.args"), "{e}");
        let e = err_of(
            r#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"namespaces":[{"type":"bogus"}]}}"#,
        );
        assert!(e.contains("linux.namespaces[0].type"), "{e}");
        let e = err_of(r#"{"ociVersion":"2.0.0","root":{"path":"r"}}"#);
        assert!(e.contains("ociVersion"), "{e}");
        let e = err_of(
            r#"{"ociVersion":"1.0.0","root":{"path":"r"},"mounts":[{"destination":"rel","type":"tmpfs"}]}"#,
        );
        assert!(e.contains("mounts[0].destination"), "{e}");
        let e = err_of(
            r#"{"ociVersion":"1.0.0","root":{"path":"r"},"linux":{"namespaces":[{"type":"user"}]}}"#,
        );
        assert!(e.contains("linux.uidMappings"), "{e}");
        let e = err_of("{not json");
        assert!(e.contains("config.json"), "{e}");
    }
}
