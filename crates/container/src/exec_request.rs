//! What `exec` runs: the process of a `--process` file, or the container's
//! own process with runc's `exec` overrides (command, terminal, env, cwd,
//! user, groups, no_new_privs, capabilities) applied.

use std::path::PathBuf;

use oci_spec::runtime::Process;

use crate::error::{Context, Error, Result};
use crate::runtime;
use crate::state::Root;

/// runc's `exec` options that shape the process (the rest, such as the
/// console socket or pid file, go to [`runtime::ExecOpts`] directly).
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// A runtime-spec `process` JSON file; it replaces everything below.
    pub process_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub tty: bool,
    /// `KEY=VALUE` entries, replacing the container's value of KEY.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `uid[:gid]`, numeric.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub no_new_privs: bool,
    /// Capability names added to every set.
    pub caps: Vec<String>,
}

/// The process to run in container `id` for `req`.
pub fn process(root: &Root, id: &str, req: &ExecRequest) -> Result<Process> {
    let process = match &req.process_file {
        Some(path) => {
            let data = std::fs::read(path).ctx(|| format!("reading {}", path.display()))?;
            let de = &mut serde_json::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize(de).map_err(|err| Error::Config {
                path: path.clone(),
                field: err.path().to_string(),
                msg: err.into_inner().to_string(),
            })?
        }
        None => {
            if req.command.is_empty() {
                return Err(Error::Usage(
                    "exec: give --process FILE or a command".into(),
                ));
            }
            let spec = runtime::container_spec(root, id)?;
            override_process(spec.process().clone().unwrap_or_default(), req)?
        }
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Usage("exec: process.args is empty".into()));
    }
    Ok(process)
}

/// The container's process `p` with `req`'s overrides.
fn override_process(mut p: Process, req: &ExecRequest) -> Result<Process> {
    p.set_args(Some(req.command.clone()));
    p.set_terminal(Some(req.tty));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &req.env {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(Error::Usage(format!("--env {kv:?} is not KEY=VALUE")));
        };
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &req.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &req.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u.as_str(), None),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| Error::Usage(format!("--user {u:?}: want uid[:gid] numbers")))
        };
        p.user_mut().set_uid(parse(uid)?);
        p.user_mut()
            .set_gid(gid.map(parse).transpose()?.unwrap_or(0));
    }
    if !req.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(req.additional_gids.clone()));
    }
    if req.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !req.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &req.caps {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(c.clone()))
                    .map_err(|_| Error::Usage(format!("--cap {c:?}: unknown capability")))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
            caps.set_ambient(add(caps.ambient()));
            caps.set_inheritable(add(caps.inheritable()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

/// Writes the default config.json (`rootless`: for an unprivileged user)
/// into `bundle`; like runc, an existing one is not overwritten.
pub fn write_default_spec(bundle: &std::path::Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::Usage(format!(
            "{} exists; remove it first",
            path.display()
        )));
    }
    let spec = crate::spec::default_spec(rootless);
    let data = serde_json::to_vec_pretty(&spec).unwrap_or_default();
    std::fs::write(&path, data).ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ExecRequest {
        ExecRequest {
            command: vec!["sh".into()],
            ..Default::default()
        }
    }

    #[test]
    fn env_replaces_the_containers_value() {
        let mut p = Process::default();
        p.set_env(Some(vec!["PATH=/bin".into(), "A=1".into()]));
        let r = ExecRequest {
            env: vec!["A=2".into(), "B=3".into()],
            ..req()
        };
        let p = override_process(p, &r).unwrap();
        assert_eq!(
            p.env().clone().unwrap(),
            vec!["PATH=/bin".to_string(), "A=2".into(), "B=3".into()]
        );
    }

    #[test]
    fn bad_overrides_are_usage_errors_naming_the_value() {
        for r in [
            ExecRequest {
                env: vec!["NOEQUALS".into()],
                ..req()
            },
            ExecRequest {
                user: Some("root".into()),
                ..req()
            },
            ExecRequest {
                caps: vec!["CAP_BOGUS".into()],
                ..req()
            },
        ] {
            let e = override_process(Process::default(), &r)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("NOEQUALS") || e.contains("root") || e.contains("CAP_BOGUS"),
                "{e}"
            );
        }
    }

    #[test]
    fn user_and_caps_are_applied() {
        let r = ExecRequest {
            user: Some("1000:100".into()),
            caps: vec!["CAP_NET_ADMIN".into()],
            no_new_privs: true,
            ..req()
        };
        let p = override_process(Process::default(), &r).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().clone().unwrap();
        assert!(caps
            .ambient()
            .as_ref()
            .unwrap()
            .contains(&oci_spec::runtime::Capability::NetAdmin));
    }
}
