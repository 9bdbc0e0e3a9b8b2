//! The JSON bodies of Firecracker's API (its `firecracker.yaml` OpenAPI
//! description), as ember reads them: every field Firecracker defines for
//! these resources is known (so a Firecracker client's body parses), unknown
//! fields are refused, and the fields ember cannot honour are refused later,
//! by value, in `resources.rs`. ember's own additions are under an `ember`
//! key (see docs/api-socket.md).

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// `PUT /machine-config` (and the config file's `machine-config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    /// vCPUs.
    pub vcpu_count: u64,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (ember: only `false`).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking for diff snapshots (ember: only `false`).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// How guest memory is backed (ember: only `"None"`).
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
    /// Deprecated CPU template (ember: only `"None"`).
    #[serde(default)]
    pub cpu_template: Option<String>,
    /// ember's extensions.
    #[serde(default)]
    pub ember: Option<EmberExtensions>,
}

/// `PATCH /machine-config`: the same fields, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// vCPUs.
    pub vcpu_count: Option<u64>,
    /// Guest RAM in MiB.
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Memory backing.
    pub huge_pages: Option<HugePages>,
    /// Deprecated CPU template.
    pub cpu_template: Option<String>,
    /// ember's extensions.
    pub ember: Option<EmberExtensions>,
}

impl MachineConfigPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.vcpu_count.is_none()
            && self.mem_size_mib.is_none()
            && self.smt.is_none()
            && self.track_dirty_pages.is_none()
            && self.huge_pages.is_none()
            && self.cpu_template.is_none()
            && self.ember.is_none()
    }
}

/// Firecracker's `huge_pages` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// ember's own fields, under `"ember"` in a machine configuration. Each is
/// optional and applied over the previous value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmberExtensions {
    /// Where COM1 goes (as `ember run --serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialExt>,
    /// The debug-exit device at port 0xf4 (as `ember run --debug-exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_exit: Option<bool>,
    /// The boot protocol (as `ember run --boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_protocol: Option<BootProtocolExt>,
    /// The virtio transport of the drives and NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportExt>,
}

/// `ember.serial`: `"stdio"`, `"none"` or `{"file": "PATH"}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialExt {
    /// Output to ember's stdout, input from its stdin.
    Stdio,
    /// No console.
    None,
    /// Output appended to this file.
    File(String),
}

/// `ember.boot_protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocolExt {
    /// PVH when the ELF has a PVH note, else the Linux 64-bit protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol.
    Linux64,
    /// PVH.
    Pvh,
}

/// `ember.transport`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportExt {
    /// virtio-pci (ember's default).
    #[default]
    Pci,
    /// virtio-mmio, announced on the kernel command line.
    Mmio,
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSourceBody {
    /// The kernel image on the host.
    pub kernel_image_path: String,
    /// An initrd on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// The kernel command line (ember's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    /// Must equal the path's id.
    pub drive_id: String,
    /// The root partition's UUID (`root=PARTUUID=…`), for a root device.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Whether this is the root device (`/dev/vda`, `root=` on the command line).
    pub is_root_device: bool,
    /// `Unsafe` or `Writeback`.
    #[serde(default)]
    pub cache_type: Option<CacheType>,
    /// Read-only (default `false`).
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// The image on the host (required by ember: no vhost-user).
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// A rate limiter (ember: only `null`).
    #[serde(default)]
    pub rate_limiter: Option<IgnoredAny>,
    /// `Sync` or `Async` (ember: only `Sync`).
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// A vhost-user socket (ember: only `null`).
    #[serde(default)]
    pub socket: Option<String>,
}

/// Firecracker's `cache_type` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum CacheType {
    /// Firecracker ignores the guest's flushes; ember honours them anyway.
    #[default]
    Unsafe,
    /// Flushes reach the disk.
    Writeback,
}

/// Firecracker's `io_engine` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum IoEngine {
    /// Blocking I/O on the event loop (ember's engine).
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceBody {
    /// Must equal the path's id.
    pub iface_id: String,
    /// The TAP device's name.
    pub host_dev_name: String,
    /// `AA:BB:CC:DD:EE:FF` (generated when absent).
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// VIRTIO_NET_F_MTU (ember: only `null`).
    #[serde(default)]
    pub mtu: Option<u64>,
    /// A receive rate limiter (ember: only `null`).
    #[serde(default)]
    pub rx_rate_limiter: Option<IgnoredAny>,
    /// A transmit rate limiter (ember: only `null`).
    #[serde(default)]
    pub tx_rate_limiter: Option<IgnoredAny>,
}

/// `PUT /logger`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerBody {
    /// A file or named pipe.
    #[serde(default)]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off` (any case; also `Warn`).
    #[serde(default)]
    pub level: Option<String>,
    /// Show each line's level.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Show each line's file and line.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Module path prefix filter.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /serial`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialBody {
    /// A file or named pipe for the guest's COM1 output.
    #[serde(default)]
    pub serial_out_path: Option<String>,
    /// A rate limiter (ember: only `null`).
    #[serde(default)]
    pub rate_limiter: Option<IgnoredAny>,
}

/// `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Which action.
    pub action_type: ActionType,
}

/// Firecracker's `action_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Write metrics now.
    FlushMetrics,
    /// Build and boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest keyboard controller.
    SendCtrlAltDel,
}

/// `PATCH /vm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmBody {
    /// The wanted state.
    pub state: VmStateBody,
}

/// Firecracker's `Vm.state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmStateBody {
    /// Park the vCPUs.
    Paused,
    /// Let them run.
    Resumed,
}

/// `GET /` (Firecracker's `InstanceInfo`).
#[derive(Debug, Serialize)]
pub struct InstanceInfo<'a> {
    /// The instance id (`--id`).
    pub id: &'a str,
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    /// ember's version.
    pub vmm_version: &'static str,
    /// `ember`.
    pub app_name: &'static str,
}

/// `GET /version`.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    /// ember's version (under Firecracker's field name).
    pub firecracker_version: &'static str,
}

/// `GET /machine-config`.
#[derive(Clone, Debug, Serialize)]
pub struct MachineConfigInfo {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Always `false` in ember.
    pub smt: bool,
    /// Always `false` in ember.
    pub track_dirty_pages: bool,
    /// Always `None` in ember.
    pub huge_pages: HugePages,
    /// ember's extensions, when any was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ember: Option<EmberExtensions>,
}

/// A drive as stored (and shown by `GET /vm/config`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DriveInfo {
    /// Its id.
    pub drive_id: String,
    /// Root partition UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Root device.
    pub is_root_device: bool,
    /// As given (default `Unsafe`).
    pub cache_type: CacheType,
    /// Read-only.
    pub is_read_only: bool,
    /// The image.
    pub path_on_host: String,
    /// Always `Sync`.
    pub io_engine: IoEngine,
}

/// A network interface as stored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NetworkInterfaceInfo {
    /// Its id.
    pub iface_id: String,
    /// The TAP device.
    pub host_dev_name: String,
    /// The MAC, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `GET /vm/config` (Firecracker's `FullVmConfiguration`), which is also a
/// valid `--config-file`.
#[derive(Debug, Serialize)]
pub struct FullConfig<'a> {
    /// The boot source, when set.
    #[serde(rename = "boot-source", skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<&'a BootSourceBody>,
    /// Drives, root first.
    pub drives: Vec<&'a DriveInfo>,
    /// The machine.
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfigInfo,
    /// NICs.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: &'a [NetworkInterfaceInfo],
}

/// An error body: `{"fault_message": "..."}`.
#[derive(Debug, Serialize)]
pub struct Fault<'a> {
    /// What went wrong, naming the value.
    pub fault_message: &'a str,
}

/// `PUT /snapshot/create` (Firecracker's `SnapshotCreateParams`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateBody {
    /// Where the state file goes.
    pub snapshot_path: String,
    /// Where the memory file goes.
    pub mem_file_path: String,
    /// `Full` (default) or `Diff` (ember: only `Full`).
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
}

/// Firecracker's snapshot types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only the pages dirtied since the last snapshot.
    Diff,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendBody {
    /// The memory file (`File`) or a userfaultfd socket (`Uffd`).
    pub backend_path: String,
    /// `File` or `Uffd` (ember: only `File`).
    pub backend_type: MemBackendType,
}

/// Firecracker's memory backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// Map the memory file.
    File,
    /// Pages served by another process through userfaultfd.
    Uffd,
}

/// `PUT /snapshot/load` (Firecracker's `SnapshotLoadParams`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    /// The state file.
    pub snapshot_path: String,
    /// The memory file (deprecated form; exactly one of this and
    /// `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackendBody>,
    /// Deprecated form of `track_dirty_pages` (ember: only `false`).
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Dirty page tracking for diff snapshots (ember: only `false`).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Resume the VM once loaded (default: it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// Other TAPs for the snapshot's interfaces (ember: none).
    #[serde(default)]
    pub network_overrides: Vec<IgnoredAny>,
    /// Firecracker's vsock override (ember has no vsock: refused).
    #[serde(default)]
    pub vsock_override: Option<IgnoredAny>,
    /// Firecracker's x86 clock override (refused).
    #[serde(default)]
    pub clock_realtime: Option<IgnoredAny>,
}
