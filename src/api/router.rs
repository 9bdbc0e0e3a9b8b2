//! Requests to resources: Firecracker's paths and methods, its status codes
//! (204 for a change, 200 with JSON for a read, 400 with a `fault_message`
//! for anything refused), the pre-boot / post-boot state machine, and the
//! calls into the VM through [`VmControl`].

use serde::de::DeserializeOwned;

use crate::api::control::{VmControl, VmState};
use crate::api::http::{Request, Response};
use crate::api::model::{
    ActionBody, ActionType, BootSourceBody, DriveBody, InstanceInfo, LoggerBody, MachineConfigBody, MachineConfigPatch,
    MemBackendType, NetworkInterfaceBody, SerialBody, SnapshotCreateBody, SnapshotLoadBody, SnapshotType, VersionInfo,
    VmBody, VmStateBody,
};
use crate::api::resources::{check_id, BadRequest, ConfigFile, HostChecks, Resources};
use crate::snapshot::SnapshotFiles;

/// The instance id when none is given (Firecracker's default).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Firecracker resources ember does not serve (answered 400 with a clear
/// message rather than as unknown paths).
const UNSUPPORTED: &[&str] = &["balloon", "cpu-config", "entropy", "hotplug", "metrics", "mmds", "pmem", "vsock"];

/// The routes: path pattern (a `{}` segment is an id), allowed methods.
const ROUTES: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/version", "GET"),
    ("/machine-config", "GET, PUT, PATCH"),
    ("/boot-source", "PUT"),
    ("/drives/{}", "PUT"),
    ("/network-interfaces/{}", "PUT"),
    ("/logger", "PUT"),
    ("/serial", "PUT"),
    ("/actions", "PUT"),
    ("/vm", "PATCH"),
    ("/vm/config", "GET"),
    ("/snapshot/create", "PUT"),
    ("/snapshot/load", "PUT"),
];

/// Which route a path is, and its id segment.
fn route(path: &str) -> Option<(&'static str, &'static str, Option<&str>)> {
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    for &(pattern, allow) in ROUTES {
        match pattern.strip_suffix("/{}") {
            Some(prefix) => {
                if let Some(id) = trimmed.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                    if !id.contains('/') {
                        return Some((pattern, allow, Some(id)));
                    }
                }
                if trimmed == prefix {
                    // `PUT /drives` without an id: the route, with an empty id.
                    return Some((pattern, allow, Some("")));
                }
            }
            None if trimmed == pattern => return Some((pattern, allow, None)),
            None => {}
        }
    }
    None
}

fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    // serde would also read a struct from an array of its fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Response::fault(400, "invalid JSON body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| Response::fault(400, &format!("invalid JSON body: {e}")))
}

/// A snapshot file path from a request: not empty, no NUL.
fn snapshot_path(field: &str, p: &str) -> Result<std::path::PathBuf, Response> {
    if p.is_empty() || p.contains('\0') {
        return Err(Response::fault(400, &format!("{field} {p:?} is not a path")));
    }
    Ok(std::path::PathBuf::from(p))
}

fn bad(e: BadRequest) -> Response {
    Response::fault(400, &e.0)
}

/// Serves the API's requests for one VM: keeps the pre-boot resources,
/// starts the VM on `InstanceStart` and forwards pause, resume and
/// Ctrl-Alt-Del to it. Independent of HTTP's framing (the connection's)
/// and of sockets (the server's).
pub struct Controller<V: VmControl> {
    vm: V,
    resources: Resources,
    started: bool,
    id: String,
}

impl<V: VmControl> Controller<V> {
    /// A controller for `vm`, not started, identified as `id` in `GET /`;
    /// paths in requests are checked on the host as `checks` says.
    pub fn new(vm: V, id: impl Into<String>, checks: HostChecks) -> Self {
        Controller { vm, resources: Resources::new(checks), started: false, id: id.into() }
    }

    /// A controller for a `vm` already started from `config` (`ember serve
    /// --config-file`, where Firecracker starts the VM at once).
    pub fn started(vm: V, id: impl Into<String>, config: ConfigFile) -> Self {
        Controller { vm, resources: config.into_resources(), started: true, id: id.into() }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// The VM behind the API.
    pub fn vm(&self) -> &V {
        &self.vm
    }

    /// The VM behind the API, mutably (tests and fuzzing set up failures).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn vm_mut(&mut self) -> &mut V {
        &mut self.vm
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// The resources configured so far.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The state `GET /` reports.
    pub fn state(&self) -> VmState {
        if self.started {
            self.vm.state()
        } else {
            VmState::NotStarted
        }
    }

    /// Starts the VM from the configured resources (`InstanceStart`).
    pub fn start(&mut self) -> Result<(), BadRequest> {
        if self.started {
            return Err(BadRequest("InstanceStart: the microVM is already started".into()));
        }
        let config = self.resources.to_vm_config()?;
        self.vm.start(config).map_err(|e| BadRequest(format!("cannot start the microVM: {e}")))?;
        self.started = true;
        Ok(())
    }

    /// Answers one request.
    pub fn handle(&mut self, req: &Request<'_>) -> Response {
        let Some((pattern, allow, id)) = route(req.path) else {
            let first = req.path.trim_start_matches('/').split('/').next().unwrap_or("");
            if UNSUPPORTED.contains(&first) {
                return Response::fault(
                    400,
                    &format!("{} {}: /{first} is not supported by ember", req.method, req.path),
                );
            }
            let path: String = req.path.chars().take(100).collect();
            return Response::fault(400, &format!("invalid request method and/or path: {} {path}", req.method));
        };
        let method = req.method;
        if !allow.split(", ").any(|m| m == method) {
            let mut r = Response::fault(405, &format!("method {method} is not allowed on {pattern}: use {allow}"));
            r.allow = Some(allow);
            return r;
        }
        match (method, req.body) {
            ("GET", Some(_)) => return Response::fault(400, "a GET request cannot have a body"),
            ("PUT" | "PATCH", None) => {
                return Response::fault(400, &format!("empty {method} request: {pattern} needs a JSON body"))
            }
            _ => {}
        }
        let body = req.body.unwrap_or(&[]);
        let result = match (method, pattern) {
            ("GET", "/") => return self.instance_info(),
            ("GET", "/version") => {
                let v = VersionInfo { firecracker_version: env!("CARGO_PKG_VERSION") };
                return Response::json(serde_json::to_string(&v).unwrap_or_default());
            }
            ("GET", "/machine-config") => {
                return Response::json(serde_json::to_string(&self.resources.machine_info()).unwrap_or_default())
            }
            ("GET", "/vm/config") => {
                return Response::json(serde_json::to_string(&self.resources.full_config()).unwrap_or_default())
            }
            ("PUT", "/actions") => self.action(body),
            ("PATCH", "/vm") => self.vm_state(body),
            ("PUT", "/snapshot/create") => self.snapshot_create(body),
            ("PUT", "/snapshot/load") => self.snapshot_load(body),
            ("PUT", _) | ("PATCH", _) => self.pre_boot(method, pattern, id.unwrap_or(""), body),
            _ => Err(Response::fault(500, "unrouted request")),
        };
        match result {
            Ok(()) => Response::no_content(),
            Err(r) => r,
        }
    }

    fn instance_info(&self) -> Response {
        let info = InstanceInfo {
            id: &self.id,
            state: self.state().as_str(),
            vmm_version: env!("CARGO_PKG_VERSION"),
            app_name: "ember",
        };
        Response::json(serde_json::to_string(&info).unwrap_or_default())
    }

    fn pre_boot(&mut self, method: &str, pattern: &str, id: &str, body: &[u8]) -> Result<(), Response> {
        if self.started {
            return Err(Response::fault(
                400,
                &format!(
                    "{method} {} is not supported after starting the microVM (pre-boot only)",
                    pattern.replace("{}", id)
                ),
            ));
        }
        let r = &mut self.resources;
        match (method, pattern) {
            ("PUT", "/machine-config") => r.put_machine_config(json_body::<MachineConfigBody>(body)?),
            ("PATCH", "/machine-config") => r.patch_machine_config(json_body::<MachineConfigPatch>(body)?),
            ("PUT", "/boot-source") => r.put_boot_source(json_body::<BootSourceBody>(body)?),
            ("PUT", "/drives/{}") => {
                check_id("drive", id).map_err(bad)?;
                r.put_drive(id, json_body::<DriveBody>(body)?)
            }
            ("PUT", "/network-interfaces/{}") => {
                check_id("network interface", id).map_err(bad)?;
                r.put_network_interface(id, json_body::<NetworkInterfaceBody>(body)?)
            }
            ("PUT", "/serial") => r.put_serial(json_body::<SerialBody>(body)?),
            ("PUT", "/logger") => {
                let settings = Resources::logger_settings(json_body::<LoggerBody>(body)?).map_err(bad)?;
                self.vm.configure_logger(&settings).map_err(|e| BadRequest(format!("logger: {e}")))
            }
            _ => return Err(Response::fault(500, "unrouted request")),
        }
        .map_err(bad)
    }

    fn action(&mut self, body: &[u8]) -> Result<(), Response> {
        let action = json_body::<ActionBody>(body)?.action_type;
        match action {
            ActionType::InstanceStart => self.start().map_err(bad),
            ActionType::SendCtrlAltDel | ActionType::FlushMetrics if !self.started => Err(Response::fault(
                400,
                &format!("{action:?} is not supported before starting the microVM (InstanceStart first)"),
            )),
            ActionType::SendCtrlAltDel => {
                self.vm.ctrl_alt_del().map_err(|e| Response::fault(400, &format!("SendCtrlAltDel: {e}")))
            }
            ActionType::FlushMetrics => {
                self.vm.flush_metrics().map_err(|e| Response::fault(400, &format!("FlushMetrics: {e}")))
            }
        }
    }

    fn snapshot_create(&mut self, body: &[u8]) -> Result<(), Response> {
        let b = json_body::<SnapshotCreateBody>(body)?;
        if !self.started {
            return Err(Response::fault(400, "cannot create a snapshot: the microVM is not started"));
        }
        if b.snapshot_type == Some(SnapshotType::Diff) {
            return Err(Response::fault(400, "snapshot_type Diff is not supported by ember: use Full"));
        }
        let state = snapshot_path("snapshot_path", &b.snapshot_path)?;
        let memory = snapshot_path("mem_file_path", &b.mem_file_path)?;
        let files = SnapshotFiles { state, memory };
        self.vm.snapshot(&files).map_err(|e| Response::fault(400, &format!("cannot create the snapshot: {e}")))
    }

    fn snapshot_load(&mut self, body: &[u8]) -> Result<(), Response> {
        let b = json_body::<SnapshotLoadBody>(body)?;
        if self.started {
            return Err(Response::fault(400, "loading a snapshot is only allowed before the microVM is started"));
        }
        if !self.resources.is_pristine() {
            return Err(Response::fault(
                400,
                "loading a snapshot is only allowed before configuring any resource other than the logger and \
                 the serial console",
            ));
        }
        if b.track_dirty_pages || b.enable_diff_snapshots {
            return Err(Response::fault(400, "dirty page tracking (diff snapshots) is not supported by ember"));
        }
        if !b.network_overrides.is_empty() {
            return Err(Response::fault(400, "network_overrides are not supported by ember"));
        }
        if b.vsock_override.is_some() || b.clock_realtime.is_some() {
            return Err(Response::fault(400, "vsock_override and clock_realtime are not supported by ember"));
        }
        let memory = match (&b.mem_file_path, &b.mem_backend) {
            (Some(p), None) => snapshot_path("mem_file_path", p)?,
            (None, Some(m)) if m.backend_type == MemBackendType::File => {
                snapshot_path("mem_backend.backend_path", &m.backend_path)?
            }
            (None, Some(_)) => {
                return Err(Response::fault(400, "mem_backend.backend_type Uffd is not supported by ember: use File"))
            }
            _ => return Err(Response::fault(400, "exactly one of mem_file_path and mem_backend must be given")),
        };
        let files = SnapshotFiles { state: snapshot_path("snapshot_path", &b.snapshot_path)?, memory };
        self.vm
            .load_snapshot(files, b.resume_vm, self.resources.serial())
            .map_err(|e| Response::fault(400, &format!("cannot load the snapshot: {e}")))?;
        self.started = true;
        Ok(())
    }

    fn vm_state(&mut self, body: &[u8]) -> Result<(), Response> {
        let want = json_body::<VmBody>(body)?.state;
        if !self.started {
            return Err(Response::fault(
                400,
                &format!("cannot set the state to {want:?}: the microVM is not started (InstanceStart first)"),
            ));
        }
        let r = match want {
            VmStateBody::Paused => self.vm.pause(),
            VmStateBody::Resumed => self.vm.resume(),
        };
        r.map_err(|e| Response::fault(400, &format!("{want:?}: {e}")))
    }
}
