//! From an HTTP request to a typed [`ApiRequest`]: routing by method and
//! path, then the JSON body, validated before anything runs (as
//! Firecracker's `parsed_request.rs`).

use serde::de::DeserializeOwned;

use super::http::HttpRequest;
use super::types::{
    ActionType, BootSource, Drive, InstanceAction, MachineConfig, MachineConfigUpdate, MemBackend,
    MemBackendType, NetworkInterface, SnapshotCreateParams, SnapshotLoadBody, SnapshotLoadParams,
    VmStateChange, VmStateRequest,
};
use super::ApiError;

/// One API call, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`
    GetInstanceInfo,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `GET /vm/config`
    GetVmConfig,
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`
    PutDrive(Drive),
    /// `PUT /network-interfaces/{id}`
    PutNetworkInterface(NetworkInterface),
    /// `PUT /actions`
    Action(ActionType),
    /// `PATCH /vm`
    PatchVm(VmStateRequest),
    /// `PUT /snapshot/create`
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`
    LoadSnapshot(SnapshotLoadParams),
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Json(e.to_string()))
}

/// Firecracker's rule for resource ids: non-empty, alphanumeric or `_`.
fn checked_id(id: Option<&str>) -> Result<&str, ApiError> {
    let id = id.unwrap_or("");
    if id.is_empty() {
        return Err(ApiError::BadRequest("The ID cannot be empty.".into()));
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(ApiError::BadRequest(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        ));
    }
    Ok(id)
}

fn id_matches(path_id: &str, body_id: &str) -> Result<(), ApiError> {
    if path_id != body_id {
        return Err(ApiError::BadRequest(
            "The id from the path does not match the id from the body!".into(),
        ));
    }
    Ok(())
}

/// Checks `xx:xx:xx:xx:xx:xx` (a unicast address, as a NIC needs).
pub(crate) fn check_mac(mac: &str) -> Result<(), ApiError> {
    let bytes: Vec<Option<u8>> = mac
        .split(':')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect();
    match bytes.as_slice() {
        [Some(first), rest @ ..] if rest.len() == 5 && rest.iter().all(Option::is_some) => {
            if first & 1 != 0 {
                return Err(ApiError::BadRequest(format!(
                    "guest_mac {mac}: a multicast address cannot be a network card's"
                )));
            }
            Ok(())
        }
        _ => Err(ApiError::BadRequest(format!(
            "guest_mac {mac:?}: expected six hex bytes such as 06:00:ac:10:00:02"
        ))),
    }
}

impl ApiRequest {
    /// Routes and parses a request.
    pub fn parse(req: &HttpRequest) -> Result<ApiRequest, ApiError> {
        let method = req.method.as_str();
        let mut tokens = req.path.trim_start_matches('/').split_terminator('/');
        let first = tokens.next().unwrap_or("");
        let second = tokens.next();
        // Nothing in the API has more than two path segments.
        let extra = tokens.next().is_some();
        let invalid = || ApiError::InvalidPathMethod {
            method: method.to_string(),
            path: req.path.clone(),
        };
        if extra {
            return Err(invalid());
        }
        let body = (!req.body.is_empty()).then_some(req.body.as_slice());
        match (method, first, second, body) {
            ("GET", "" | "machine-config", None, None) | ("GET", "vm", Some("config"), None) => {
                Ok(match first {
                    "" => ApiRequest::GetInstanceInfo,
                    "machine-config" => ApiRequest::GetMachineConfig,
                    _ => ApiRequest::GetVmConfig,
                })
            }
            ("GET", "" | "machine-config" | "vm", _, Some(_)) => Err(ApiError::BadRequest(
                "GET request cannot have a body.".into(),
            )),
            ("PUT", "machine-config", None, Some(b)) => {
                let mc: MachineConfig = json(b)?;
                Ok(ApiRequest::PutMachineConfig(mc))
            }
            ("PATCH", "machine-config", None, Some(b)) => {
                Ok(ApiRequest::PatchMachineConfig(json(b)?))
            }
            ("PUT", "boot-source", None, Some(b)) => Ok(ApiRequest::PutBootSource(json(b)?)),
            ("PUT", "drives", id, Some(b)) => {
                let id = checked_id(id)?;
                let drive: Drive = json(b)?;
                id_matches(id, &drive.drive_id)?;
                Ok(ApiRequest::PutDrive(drive))
            }
            ("PUT", "network-interfaces", id, Some(b)) => {
                let id = checked_id(id)?;
                let iface: NetworkInterface = json(b)?;
                id_matches(id, &iface.iface_id)?;
                Ok(ApiRequest::PutNetworkInterface(iface))
            }
            ("PUT", "actions", None, Some(b)) => {
                let action: InstanceAction = json(b)?;
                Ok(ApiRequest::Action(action.action_type))
            }
            ("PUT", "snapshot", Some("create"), Some(b)) => {
                Ok(ApiRequest::CreateSnapshot(json(b)?))
            }
            ("PUT", "snapshot", Some("load"), Some(b)) => {
                let body: SnapshotLoadBody = json(b)?;
                let mem_backend =
                    match (body.mem_backend, body.mem_file_path) {
                        (Some(_), Some(_)) => {
                            return Err(ApiError::Json(
                                "too many fields: either `mem_backend` or `mem_file_path` \
                             exclusively is required"
                                    .into(),
                            ))
                        }
                        (None, None) => return Err(ApiError::Json(
                            "missing field: either `mem_backend` or `mem_file_path` is required"
                                .into(),
                        )),
                        (Some(backend), None) => backend,
                        (None, Some(path)) => MemBackend {
                            backend_type: MemBackendType::File,
                            backend_path: path,
                        },
                    };
                Ok(ApiRequest::LoadSnapshot(SnapshotLoadParams {
                    snapshot_path: body.snapshot_path,
                    mem_backend,
                    enable_diff_snapshots: body.enable_diff_snapshots,
                    resume_vm: body.resume_vm,
                }))
            }
            ("PUT", "snapshot", None, Some(_)) => Err(ApiError::BadRequest(
                "Missing snapshot operation type.".into(),
            )),
            ("PATCH", "vm", None, Some(b)) => {
                let change: VmStateChange = json(b)?;
                Ok(ApiRequest::PatchVm(change.state))
            }
            ("PUT", _, _, None) => Err(ApiError::BadRequest("Empty PUT request.".into())),
            ("PATCH", _, _, None) => Err(ApiError::BadRequest("Empty PATCH request.".into())),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Result<ApiRequest, ApiError> {
        ApiRequest::parse(&HttpRequest {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        })
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(req("GET", "/", ""), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(req("GET", "/vm/config", ""), Ok(ApiRequest::GetVmConfig));
        assert_eq!(
            req("GET", "/machine-config", ""),
            Ok(ApiRequest::GetMachineConfig)
        );
        assert_eq!(
            req(
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#
            ),
            Ok(ApiRequest::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: false,
                track_dirty_pages: false
            }))
        );
        assert_eq!(
            req("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
            Ok(ApiRequest::Action(ActionType::InstanceStart))
        );
        assert_eq!(
            req("PATCH", "/vm", r#"{"state": "Paused"}"#),
            Ok(ApiRequest::PatchVm(VmStateRequest::Paused))
        );
        let drive = r#"{"drive_id": "rootfs", "path_on_host": "/d.img", "is_root_device": true, "is_read_only": false}"#;
        assert!(
            matches!(req("PUT", "/drives/rootfs", drive), Ok(ApiRequest::PutDrive(d)) if d.is_root_device)
        );
        let nic =
            r#"{"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#;
        assert!(matches!(
            req("PUT", "/network-interfaces/eth0", nic),
            Ok(ApiRequest::PutNetworkInterface(_))
        ));
        let user = r#"{"iface_id": "eth0", "virtkit_user_net": {"hostfwd": ["tcp::2222-:22"]}}"#;
        assert!(
            matches!(req("PUT", "/network-interfaces/eth0", user), Ok(ApiRequest::PutNetworkInterface(n)) if n.virtkit_user_net.is_some())
        );
    }

    #[test]
    fn snapshot_load_takes_both_memory_spellings() {
        let want = Ok(ApiRequest::LoadSnapshot(SnapshotLoadParams {
            snapshot_path: PathBuf::from("s"),
            mem_backend: MemBackend {
                backend_type: MemBackendType::File,
                backend_path: PathBuf::from("m"),
            },
            enable_diff_snapshots: false,
            resume_vm: true,
        }));
        assert_eq!(
            req(
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "resume_vm": true}"#
            ),
            want
        );
        assert_eq!(
            req(
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": true}"#
            ),
            want
        );
        let both = r#"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#;
        assert!(
            matches!(req("PUT", "/snapshot/load", both), Err(ApiError::Json(m)) if m.contains("too many fields"))
        );
        assert!(
            matches!(req("PUT", "/snapshot/load", r#"{"snapshot_path": "s"}"#), Err(ApiError::Json(m)) if m.contains("missing field"))
        );
    }

    #[test]
    fn rejects_unknown_paths_methods_fields_and_ids() {
        let invalid = |m: &str, p: &str| ApiError::InvalidPathMethod {
            method: m.into(),
            path: p.into(),
        };
        assert_eq!(req("GET", "/nope", ""), Err(invalid("GET", "/nope")));
        assert_eq!(req("DELETE", "/vm", ""), Err(invalid("DELETE", "/vm")));
        assert_eq!(
            req("POST", "/actions", "{}"),
            Err(invalid("POST", "/actions"))
        );
        assert_eq!(
            req("GET", "/vm/config/x", ""),
            Err(invalid("GET", "/vm/config/x"))
        );
        assert_eq!(
            req("PUT", "/snapshot/frobnicate", "{}"),
            Err(invalid("PUT", "/snapshot/frobnicate"))
        );
        assert_eq!(
            req("PUT", "/actions", ""),
            Err(ApiError::BadRequest("Empty PUT request.".into()))
        );
        let unknown = req("PATCH", "/vm", r#"{"state": "Paused", "extra": 1}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `extra`"),
            "{unknown}"
        );
        let bad_state = req("PATCH", "/vm", r#"{"state": "Sleeping"}"#).unwrap_err();
        assert!(
            bad_state.to_string().contains("unknown variant `Sleeping`"),
            "{bad_state}"
        );
        let mismatch = r#"{"drive_id": "b", "path_on_host": "/d", "is_root_device": false}"#;
        assert!(
            matches!(req("PUT", "/drives/a", mismatch), Err(ApiError::BadRequest(m)) if m.contains("does not match"))
        );
        assert!(
            matches!(req("PUT", "/drives/a-b", mismatch), Err(ApiError::BadRequest(m)) if m.contains("alphanumeric"))
        );
        assert!(
            matches!(req("PUT", "/drives", mismatch), Err(ApiError::BadRequest(m)) if m.contains("empty"))
        );
        assert!(matches!(
            req("PUT", "/machine-config", "{not json"),
            Err(ApiError::Json(_))
        ));
    }

    #[test]
    fn mac_check() {
        assert!(check_mac("06:00:ac:10:00:02").is_ok());
        assert!(check_mac("07:00:ac:10:00:02").is_err());
        assert!(check_mac("06:00:ac:10:00").is_err());
        assert!(check_mac("06:00:ac:10:00:0g").is_err());
        assert!(check_mac("06:00:ac:10:00:002").is_err());
    }
}
