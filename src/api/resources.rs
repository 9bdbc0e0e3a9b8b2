//! The pre-boot resources (machine, boot source, drives, NICs, logger,
//! serial, ember's extensions), their validation, and their translation
//! into a [`VmConfig`]. The API socket and `--config-file` both go through
//! these methods: one code path, one set of checks and messages.

use std::path::PathBuf;

use serde::Deserialize;

use crate::api::control::LoggerSettings;
use crate::api::model::{
    BootProtocolExt, BootSourceBody, CacheType, DriveBody, DriveInfo, EmberExtensions, FullConfig, HugePages, IoEngine,
    LoggerBody, MachineConfigBody, MachineConfigInfo, MachineConfigPatch, NetworkInterfaceBody, NetworkInterfaceInfo,
    SerialBody, SerialExt, TransportExt,
};
use crate::config::{BootProtocol, DiskConfig, NetConfig, SerialConfig, VirtioTransport, VmConfig};
use ember_devices::virtio::net::parse_mac;

/// Guest memory before any `PUT /machine-config`: Firecracker's default.
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;

/// A request that cannot be honoured: answered with 400 and this message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

fn bad<T>(message: impl Into<String>) -> Result<T, BadRequest> {
    Err(BadRequest(message.into()))
}

/// Whether paths given in requests are checked on the host when they are
/// given (stat and access(2) only: nothing is opened), or only when the VM
/// is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostChecks {
    /// Check kernel, initrd and drive paths at once (the server's default).
    Now,
    /// Check nothing on the host (tests, fuzzing).
    Never,
}

/// Checks a resource id from a path: not empty, ASCII letters, digits and
/// `_` only (Firecracker's rule).
pub fn check_id(what: &str, id: &str) -> Result<(), BadRequest> {
    if id.is_empty() {
        return bad(format!("the {what} id in the path is empty"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return bad(format!("invalid {what} id {id:?}: only ASCII letters, digits and '_' are allowed"));
    }
    Ok(())
}

/// The machine as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Machine {
    vcpus: u8,
    mem_mib: u64,
}

/// ember's extensions, parsed.
#[derive(Clone, Debug, Default)]
struct Extras {
    shown: EmberExtensions,
    serial: Option<SerialConfig>,
    debug_exit: bool,
    boot: BootProtocol,
    transport: VirtioTransport,
}

/// Everything that is configured before `InstanceStart`.
#[derive(Clone, Debug)]
pub struct Resources {
    checks: HostChecks,
    machine: Machine,
    boot: Option<BootSourceBody>,
    drives: Vec<DriveInfo>,
    nets: Vec<NetworkInterfaceInfo>,
    extras: Extras,
}

fn check_ext(ext: &EmberExtensions, base: &Extras) -> Result<Extras, BadRequest> {
    let mut out = base.clone();
    if let Some(s) = &ext.serial {
        out.serial = Some(match s {
            SerialExt::Stdio => SerialConfig::Stdio,
            SerialExt::None => SerialConfig::None,
            SerialExt::File(p) if p.is_empty() || p.contains('\0') => {
                return bad(format!("ember.serial file {p:?} is not a path"))
            }
            SerialExt::File(p) => SerialConfig::File(PathBuf::from(p)),
        });
        out.shown.serial = Some(s.clone());
    }
    if let Some(d) = ext.debug_exit {
        out.debug_exit = d;
        out.shown.debug_exit = Some(d);
    }
    if let Some(b) = ext.boot_protocol {
        out.boot = match b {
            BootProtocolExt::Auto => BootProtocol::Auto,
            BootProtocolExt::Linux64 => BootProtocol::Linux64,
            BootProtocolExt::Pvh => BootProtocol::Pvh,
        };
        out.shown.boot_protocol = Some(b);
    }
    if let Some(t) = ext.transport {
        out.transport = match t {
            TransportExt::Pci => VirtioTransport::Pci,
            TransportExt::Mmio => VirtioTransport::Mmio,
        };
        out.shown.transport = Some(t);
    }
    Ok(out)
}

/// Values of a machine configuration, before they are applied.
struct MachineValues {
    vcpu_count: u64,
    mem_size_mib: u64,
    smt: bool,
    track_dirty_pages: bool,
    huge_pages: HugePages,
    cpu_template: Option<String>,
}

fn check_machine(v: &MachineValues) -> Result<Machine, BadRequest> {
    if v.vcpu_count == 0 || v.vcpu_count > u64::from(VmConfig::MAX_VCPUS) {
        return bad(format!(
            "vcpu_count {} is out of range: ember supports 1 to {} vCPUs",
            v.vcpu_count,
            VmConfig::MAX_VCPUS
        ));
    }
    let (min, max) = (VmConfig::MIN_MEMORY >> 20, VmConfig::MAX_MEMORY >> 20);
    if v.mem_size_mib < min || v.mem_size_mib > max {
        return bad(format!("mem_size_mib {} is out of range: ember supports {min} to {max} MiB", v.mem_size_mib));
    }
    if v.smt {
        return bad("smt true is not supported: ember gives every vCPU a core of its own (no SMT siblings)");
    }
    if v.track_dirty_pages {
        return bad("track_dirty_pages true is not supported: ember has no snapshots to use dirty pages for");
    }
    match v.huge_pages {
        HugePages::None => {}
        HugePages::Transparent => {
            return bad("huge_pages \"Transparent\" is not supported: ember backs guest memory with 4 KiB pages")
        }
        HugePages::Hugetlbfs2M => {
            return bad("huge_pages \"2M\" is not supported: ember backs guest memory with 4 KiB pages")
        }
    }
    if let Some(t) = &v.cpu_template {
        if t != "None" {
            return bad(format!("cpu_template {t:?} is not supported: ember has no CPU templates (only \"None\")"));
        }
    }
    Ok(Machine { vcpus: v.vcpu_count as u8, mem_mib: v.mem_size_mib })
}

fn check_file(checks: HostChecks, field: &str, path: &str, writable: bool, block_ok: bool) -> Result<(), BadRequest> {
    if path.is_empty() {
        return bad(format!("{field} is empty"));
    }
    if path.contains('\0') {
        return bad(format!("{field} {path:?} contains a NUL byte"));
    }
    if checks == HostChecks::Never {
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|e| BadRequest(format!("{field} {path:?}: {e}")))?;
    let ft = meta.file_type();
    let block = {
        use std::os::unix::fs::FileTypeExt;
        ft.is_block_device()
    };
    if !(ft.is_file() || (block_ok && block)) {
        return bad(format!("{field} {path:?} is not a regular file"));
    }
    let c = std::ffi::CString::new(path).map_err(|_| BadRequest(format!("{field} {path:?} contains a NUL byte")))?;
    let mode = if writable { libc::R_OK | libc::W_OK } else { libc::R_OK };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    if unsafe { libc::access(c.as_ptr(), mode) } != 0 {
        let how = if writable { "readable and writable" } else { "readable" };
        return bad(format!("{field} {path:?} is not {how}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn parse_level(s: &str) -> Option<log::LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

impl Resources {
    /// Nothing configured: 1 vCPU, 128 MiB (Firecracker's defaults), no
    /// boot source.
    pub fn new(checks: HostChecks) -> Self {
        Resources {
            checks,
            machine: Machine { vcpus: 1, mem_mib: DEFAULT_MEM_SIZE_MIB },
            boot: None,
            drives: Vec::new(),
            nets: Vec::new(),
            extras: Extras::default(),
        }
    }

    /// Whether nothing that describes the machine has been configured
    /// (machine, boot source, drives, interfaces): `PUT /snapshot/load`
    /// is only accepted then, as Firecracker's rule is.
    pub fn is_pristine(&self) -> bool {
        self.boot.is_none()
            && self.drives.is_empty()
            && self.nets.is_empty()
            && self.machine.vcpus == 1
            && self.machine.mem_mib == DEFAULT_MEM_SIZE_MIB
    }

    /// Where COM1 goes, if `PUT /serial` or the ember extension set it.
    pub fn serial(&self) -> Option<SerialConfig> {
        self.extras.serial.clone()
    }

    /// `PUT /machine-config`: replaces the machine (absent optional fields
    /// take their defaults); ember's extensions, when given, are applied
    /// over the current ones.
    pub fn put_machine_config(&mut self, body: MachineConfigBody) -> Result<(), BadRequest> {
        let machine = check_machine(&MachineValues {
            vcpu_count: body.vcpu_count,
            mem_size_mib: body.mem_size_mib,
            smt: body.smt,
            track_dirty_pages: body.track_dirty_pages,
            huge_pages: body.huge_pages.unwrap_or_default(),
            cpu_template: body.cpu_template,
        })?;
        let extras = match &body.ember {
            Some(e) => check_ext(e, &self.extras)?,
            None => self.extras.clone(),
        };
        self.machine = machine;
        self.extras = extras;
        Ok(())
    }

    /// `PATCH /machine-config`: changes only the fields given.
    pub fn patch_machine_config(&mut self, patch: MachineConfigPatch) -> Result<(), BadRequest> {
        if patch.is_empty() {
            return bad("empty PATCH /machine-config: give at least one field");
        }
        let machine = check_machine(&MachineValues {
            vcpu_count: patch.vcpu_count.unwrap_or(u64::from(self.machine.vcpus)),
            mem_size_mib: patch.mem_size_mib.unwrap_or(self.machine.mem_mib),
            smt: patch.smt.unwrap_or(false),
            track_dirty_pages: patch.track_dirty_pages.unwrap_or(false),
            huge_pages: patch.huge_pages.unwrap_or_default(),
            cpu_template: patch.cpu_template,
        })?;
        let extras = match &patch.ember {
            Some(e) => check_ext(e, &self.extras)?,
            None => self.extras.clone(),
        };
        self.machine = machine;
        self.extras = extras;
        Ok(())
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&mut self, body: BootSourceBody) -> Result<(), BadRequest> {
        check_file(self.checks, "kernel_image_path", &body.kernel_image_path, false, false)?;
        if let Some(i) = &body.initrd_path {
            check_file(self.checks, "initrd_path", i, false, false)?;
        }
        if let Some(a) = &body.boot_args {
            if a.contains('\0') {
                return bad("boot_args contains a NUL byte");
            }
        }
        self.boot = Some(body);
        Ok(())
    }

    fn device_room(&self, adding: bool) -> Result<(), BadRequest> {
        let max = crate::layout::max_virtio_devices();
        let count = self.drives.len() + self.nets.len() + usize::from(adding);
        if count > max {
            return bad(format!(
                "too many devices: {} drives and {} network interfaces are configured and ember fits at most {max} \
                 virtio devices in all",
                self.drives.len(),
                self.nets.len()
            ));
        }
        Ok(())
    }

    /// `PUT /drives/{drive_id}`: adds a drive, or replaces the one with
    /// this id.
    pub fn put_drive(&mut self, path_id: &str, body: DriveBody) -> Result<(), BadRequest> {
        check_id("drive", path_id)?;
        if body.drive_id != path_id {
            return bad(format!("drive_id {:?} in the body differs from {path_id:?} in the path", body.drive_id));
        }
        if body.socket.is_some() {
            return bad("socket (vhost-user block) is not supported: give path_on_host");
        }
        if body.rate_limiter.is_some() {
            return bad(format!("drive {path_id:?}: rate_limiter is not supported by ember (omit it or send null)"));
        }
        if body.io_engine == Some(IoEngine::Async) {
            return bad(format!("drive {path_id:?}: io_engine \"Async\" is not supported: ember's engine is \"Sync\""));
        }
        let Some(path) = body.path_on_host else {
            return bad(format!("drive {path_id:?}: path_on_host is required"));
        };
        let read_only = body.is_read_only.unwrap_or(false);
        if let Some(p) = &body.partuuid {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return bad(format!("drive {path_id:?}: partuuid {p:?} is not a partition UUID"));
            }
        }
        check_file(self.checks, "path_on_host", &path, !read_only, true)?;
        let existing = self.drives.iter().position(|d| d.drive_id == path_id);
        if body.is_root_device {
            if let Some(root) = self.drives.iter().find(|d| d.is_root_device && d.drive_id != path_id) {
                return bad(format!("drive {path_id:?} cannot be a root device: drive {:?} already is", root.drive_id));
            }
        }
        if existing.is_none() {
            self.device_room(true)?;
        }
        let info = DriveInfo {
            drive_id: path_id.to_string(),
            partuuid: body.partuuid,
            is_root_device: body.is_root_device,
            cache_type: body.cache_type.unwrap_or(CacheType::Unsafe),
            is_read_only: read_only,
            path_on_host: path,
            io_engine: IoEngine::Sync,
        };
        match existing {
            Some(i) => self.drives[i] = info,
            None => self.drives.push(info),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{iface_id}`: adds a NIC, or replaces the one
    /// with this id.
    pub fn put_network_interface(&mut self, path_id: &str, body: NetworkInterfaceBody) -> Result<(), BadRequest> {
        check_id("network interface", path_id)?;
        if body.iface_id != path_id {
            return bad(format!("iface_id {:?} in the body differs from {path_id:?} in the path", body.iface_id));
        }
        let tap = &body.host_dev_name;
        if tap.is_empty() || tap.len() > 15 || tap.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace()) {
            return bad(format!("host_dev_name {tap:?} is not a TAP device name (1 to 15 bytes, no '/' or spaces)"));
        }
        if body.mtu.is_some() {
            return bad(format!("network interface {path_id:?}: mtu is not supported by ember (omit it)"));
        }
        if body.rx_rate_limiter.is_some() || body.tx_rate_limiter.is_some() {
            return bad(format!("network interface {path_id:?}: rate limiters are not supported by ember"));
        }
        if let Some(m) = &body.guest_mac {
            if parse_mac(m).is_none() {
                return bad(format!("guest_mac {m:?} is not a MAC address (six hex pairs like 06:00:ac:10:00:02)"));
            }
        }
        for other in self.nets.iter().filter(|n| n.iface_id != path_id) {
            if other.host_dev_name == *tap {
                return bad(format!("host_dev_name {tap:?} is already used by network interface {:?}", other.iface_id));
            }
            if let (Some(a), Some(b)) = (&body.guest_mac, &other.guest_mac) {
                if parse_mac(a) == parse_mac(b) {
                    return bad(format!("guest_mac {a} is already used by network interface {:?}", other.iface_id));
                }
            }
        }
        let existing = self.nets.iter().position(|n| n.iface_id == path_id);
        if existing.is_none() {
            self.device_room(true)?;
        }
        let info = NetworkInterfaceInfo {
            iface_id: path_id.to_string(),
            host_dev_name: tap.clone(),
            guest_mac: body.guest_mac,
        };
        match existing {
            Some(i) => self.nets[i] = info,
            None => self.nets.push(info),
        }
        Ok(())
    }

    /// `PUT /logger`: checks the body and returns the settings to apply.
    pub fn logger_settings(body: LoggerBody) -> Result<LoggerSettings, BadRequest> {
        let level = match &body.level {
            Some(l) => Some(parse_level(l).ok_or_else(|| {
                BadRequest(format!("level {l:?} is invalid: expected Error, Warning, Info, Debug, Trace or Off"))
            })?),
            None => None,
        };
        if let Some(p) = &body.log_path {
            if p.is_empty() || p.contains('\0') {
                return bad(format!("log_path {p:?} is not a path"));
            }
        }
        Ok(LoggerSettings {
            log_path: body.log_path.map(PathBuf::from),
            level,
            show_level: body.show_level.unwrap_or(false),
            show_log_origin: body.show_log_origin.unwrap_or(false),
            module: body.module,
        })
    }

    /// `PUT /serial`: the guest's COM1 output to a file or named pipe
    /// (stdout when `serial_out_path` is absent).
    pub fn put_serial(&mut self, body: SerialBody) -> Result<(), BadRequest> {
        if body.rate_limiter.is_some() {
            return bad("serial rate_limiter is not supported by ember");
        }
        let (cfg, shown) = match body.serial_out_path {
            Some(p) if p.is_empty() || p.contains('\0') => return bad(format!("serial_out_path {p:?} is not a path")),
            Some(p) => (SerialConfig::File(PathBuf::from(&p)), SerialExt::File(p)),
            None => (SerialConfig::Stdio, SerialExt::Stdio),
        };
        self.extras.serial = Some(cfg);
        self.extras.shown.serial = Some(shown);
        Ok(())
    }

    /// Drives in the order the guest sees them: the root device first
    /// (`/dev/vda`), then the others in the order they were added.
    fn ordered_drives(&self) -> Vec<&DriveInfo> {
        let root = self.drives.iter().filter(|d| d.is_root_device);
        root.chain(self.drives.iter().filter(|d| !d.is_root_device)).collect()
    }

    /// The machine as `GET /machine-config` shows it.
    pub fn machine_info(&self) -> MachineConfigInfo {
        let shown = &self.extras.shown;
        MachineConfigInfo {
            vcpu_count: self.machine.vcpus,
            mem_size_mib: self.machine.mem_mib,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            ember: (*shown != EmberExtensions::default()).then(|| shown.clone()),
        }
    }

    /// Everything, as `GET /vm/config` shows it (a valid config file).
    pub fn full_config(&self) -> FullConfig<'_> {
        FullConfig {
            boot_source: self.boot.as_ref(),
            drives: self.ordered_drives(),
            machine_config: self.machine_info(),
            network_interfaces: &self.nets,
        }
    }

    /// The VM configuration these resources describe, validated.
    pub fn to_vm_config(&self) -> Result<VmConfig, BadRequest> {
        let Some(boot) = &self.boot else {
            return bad("cannot start the microVM: no boot source (PUT /boot-source first)");
        };
        let mut c = VmConfig::new(&boot.kernel_image_path);
        c.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
        let mut cmdline = boot.boot_args.clone().unwrap_or_else(|| VmConfig::DEFAULT_CMDLINE.to_string());
        let drives = self.ordered_drives();
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            match &root.partuuid {
                Some(u) => cmdline.push_str(&format!(" root=PARTUUID={u}")),
                None => cmdline.push_str(" root=/dev/vda"),
            }
            cmdline.push_str(if root.is_read_only { " ro" } else { " rw" });
        }
        c.cmdline = cmdline.trim_start().to_string();
        c.memory = self.machine.mem_mib << 20;
        c.vcpus = self.machine.vcpus;
        c.serial = self.extras.serial.clone().unwrap_or(SerialConfig::Stdio);
        c.debug_exit = self.extras.debug_exit;
        c.boot = self.extras.boot;
        c.disks = drives
            .iter()
            .map(|d| DiskConfig {
                path: PathBuf::from(&d.path_on_host),
                read_only: d.is_read_only,
                id: None,
                transport: self.extras.transport,
            })
            .collect();
        c.nets = self
            .nets
            .iter()
            .map(|n| NetConfig {
                tap: n.host_dev_name.clone(),
                mac: n.guest_mac.as_deref().and_then(parse_mac),
                transport: self.extras.transport,
            })
            .collect();
        c.validate().map_err(|e| BadRequest(format!("cannot start the microVM: {e}")))?;
        Ok(c)
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// The kernel, when a boot source is set.
    pub fn kernel(&self) -> Option<&std::path::Path> {
        self.boot.as_ref().map(|b| std::path::Path::new(&b.kernel_image_path))
    }
}

/// Firecracker's `--config-file` JSON, as ember reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFileJson {
    boot_source: BootSourceBody,
    #[serde(default)]
    drives: Vec<DriveBody>,
    #[serde(default)]
    machine_config: Option<MachineConfigBody>,
    #[serde(default)]
    network_interfaces: Vec<NetworkInterfaceBody>,
    #[serde(default)]
    logger: Option<LoggerBody>,
    // Firecracker resources ember does not have: accepted when absent or
    // null (as Firecracker's own example file has them), refused otherwise.
    #[serde(default)]
    balloon: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cpu_config: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    metrics: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    mmds_config: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    vsock: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    entropy: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    memory_hotplug: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pmem: Vec<serde::de::IgnoredAny>,
}

/// A config file, read and checked: the VM it describes and the logger
/// settings it gives.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    resources: Resources,
    logger: Option<LoggerSettings>,
}

impl ConfigFile {
    /// The VM configuration, validated. ember's library defaults apply to
    /// what the file cannot say (seccomp off, no jail): the caller sets them.
    pub fn vm_config(&self) -> Result<VmConfig, BadRequest> {
        self.resources.to_vm_config()
    }

    /// The `logger` section.
    pub fn logger(&self) -> Option<&LoggerSettings> {
        self.logger.as_ref()
    }

    /// The resources, as the API holds them.
    pub(crate) fn into_resources(self) -> Resources {
        self.resources
    }
}

/// Reads Firecracker's `--config-file` JSON (`boot-source`, `drives`,
/// `machine-config`, `network-interfaces`, `logger`, with ember's
/// extensions under `machine-config.ember`) through the same checks as the
/// API, the paths checked on the host (stat and access(2)). Errors name the
/// section and the value.
pub fn parse_config_file(json: &[u8]) -> Result<ConfigFile, BadRequest> {
    parse_config_file_with(json, HostChecks::Now)
}

/// [`parse_config_file`], with the host checks given.
pub fn parse_config_file_with(json: &[u8], checks: HostChecks) -> Result<ConfigFile, BadRequest> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return bad("invalid config file: expected a JSON object");
    }
    let file: ConfigFileJson =
        serde_json::from_slice(json).map_err(|e| BadRequest(format!("invalid config file: {e}")))?;
    for (name, present) in [
        ("balloon", file.balloon.is_some()),
        ("cpu-config", file.cpu_config.is_some()),
        ("metrics", file.metrics.is_some()),
        ("mmds-config", file.mmds_config.is_some()),
        ("vsock", file.vsock.is_some()),
        ("entropy", file.entropy.is_some()),
        ("memory-hotplug", file.memory_hotplug.is_some()),
        ("pmem", !file.pmem.is_empty()),
    ] {
        if present {
            return bad(format!("config file: \"{name}\" is not supported by ember (omit it or give null)"));
        }
    }
    let mut r = Resources::new(checks);
    let ctx = |section: String| move |e: BadRequest| BadRequest(format!("config file: {section}: {}", e.0));
    if let Some(m) = file.machine_config {
        r.put_machine_config(m).map_err(ctx("machine-config".into()))?;
    }
    r.put_boot_source(file.boot_source).map_err(ctx("boot-source".into()))?;
    for (i, d) in file.drives.into_iter().enumerate() {
        let id = d.drive_id.clone();
        r.put_drive(&id, d).map_err(ctx(format!("drives[{i}]")))?;
    }
    for (i, n) in file.network_interfaces.into_iter().enumerate() {
        let id = n.iface_id.clone();
        r.put_network_interface(&id, n).map_err(ctx(format!("network-interfaces[{i}]")))?;
    }
    let logger = file.logger.map(Resources::logger_settings).transpose().map_err(ctx("logger".into()))?;
    Ok(ConfigFile { resources: r, logger })
}
