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
                if k.is_empty() || k.contains('/') || k.contains("..") {
                    return Err(spec_err(format!("linux.sysctl.{k}"), "not a sysctl name"));
                }
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
