//! The VM's side of snapshots: what a running VM keeps so that it can be
//! saved ([`SnapshotSource`]), the VM-wide KVM state (irqchip, PIT,
//! clock), and the configuration a restore builds from a state file.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::config::{DiskConfig, NetConfig, SerialConfig, VirtioTransport, VmConfig};
use crate::cpuid;
use crate::memory::BackingFile;
use crate::run_control::RunControl;
use crate::snapshot::devices::DeviceStates;
use crate::snapshot::state::{Machine, SavedDisk, SavedNet};
use crate::snapshot::{
    self, memory_file, CpuModel, RestoreConfig, SnapshotError, SnapshotFiles, SnapshotInfo, VcpuState, VmState,
};
use crate::vcpu::StateSlots;

/// How long a snapshot waits for the parked vCPU threads' states.
const VCPU_STATE_TIMEOUT: Duration = Duration::from_secs(2);

fn kerr(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// The in-kernel devices' state: both PICs, the IOAPIC, the PIT, the clock.
pub(crate) struct KernelState {
    pub(crate) pic_master: kvm_irqchip,
    pub(crate) pic_slave: kvm_irqchip,
    pub(crate) ioapic: kvm_irqchip,
    pub(crate) pit: kvm_pit_state2,
    pub(crate) clock: kvm_clock_data,
}

/// Reads the irqchip, PIT and clock.
pub(crate) fn save_kernel_state(vm: &VmFd) -> Result<KernelState, SnapshotError> {
    let chip = |id| -> Result<kvm_irqchip, SnapshotError> {
        let mut c = kvm_irqchip { chip_id: id, ..Default::default() };
        vm.get_irqchip(&mut c).map_err(kerr("KVM_GET_IRQCHIP"))?;
        Ok(c)
    };
    Ok(KernelState {
        pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kerr("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kerr("KVM_GET_CLOCK"))?,
    })
}

/// Puts the saved irqchip, PIT and clock back (before the vCPUs' state).
/// The clock is set to the saved value: guest time resumes where it
/// stopped, as after a pause (docs/snapshot.md).
pub(crate) fn restore_kernel_state(vm: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    vm.set_pit2(&s.pit).map_err(kerr("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data { clock: s.clock.clock, ..Default::default() };
    vm.set_clock(&clock).map_err(kerr("KVM_SET_CLOCK"))?;
    for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(chip).map_err(kerr("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

/// The machine a snapshot of a VM built from `config` describes.
pub(crate) fn machine_of(config: &VmConfig, macs: &[[u8; 6]], cmdline: &str) -> Machine {
    Machine {
        memory: config.memory,
        vcpus: config.vcpus,
        debug_exit: config.debug_exit,
        extra_serials: config.extra_serials.len() as u8,
        disks: config
            .disks
            .iter()
            .map(|d| SavedDisk {
                path: d.path.clone(),
                read_only: d.read_only,
                id: d.id.clone(),
                transport: d.transport.name().to_string(),
            })
            .collect(),
        nets: config
            .nets
            .iter()
            .zip(macs)
            .map(|(n, mac)| SavedNet { tap: n.tap.clone(), mac: *mac, transport: n.transport.name().to_string() })
            .collect(),
        cmdline: cmdline.to_string(),
    }
}

/// The configuration that builds the snapshot's machine again, with the
/// host-side choices of `rc`.
pub(crate) fn config_for_restore(state: &VmState, rc: &RestoreConfig) -> VmConfig {
    let m = &state.machine;
    let transport = |name: &str| VirtioTransport::from_name(name).unwrap_or_default();
    let mut c = VmConfig::new("");
    c.cmdline = m.cmdline.clone();
    c.memory = m.memory;
    c.vcpus = m.vcpus;
    c.debug_exit = m.debug_exit;
    c.serial = rc.serial.clone();
    c.extra_serials = (0..usize::from(m.extra_serials))
        .map(|i| rc.extra_serials.get(i).cloned().unwrap_or(SerialConfig::None))
        .collect();
    c.disks = m
        .disks
        .iter()
        .map(|d| DiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            id: d.id.clone(),
            transport: transport(&d.transport),
        })
        .collect();
    c.nets = m
        .nets
        .iter()
        .map(|n| NetConfig { tap: n.tap.clone(), mac: Some(n.mac), transport: transport(&n.transport) })
        .collect();
    c.virtio_mmio_cmdline = false;
    c.seccomp = rc.seccomp;
    c.jail = rc.jail.clone();
    c.drop_code_pages = rc.drop_code_pages;
    c
}

/// What a running VM keeps so that a paused VM can be written out.
pub(crate) struct SnapshotSource {
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    /// The file RAM is mapped from, if it is (a restored VM's): the
    /// snapshot must not overwrite it, and copies what the guest did not
    /// write from it. Without one RAM is anonymous, and untouched pages
    /// are zero and left as holes.
    pub(crate) backing_file: Option<BackingFile>,
    /// `/proc/self/pagemap`, opened while `/proc` was in reach.
    pub(crate) pagemap: Option<File>,
    pub(crate) machine: Machine,
    pub(crate) slots: Arc<StateSlots>,
    pub(crate) devices: Box<dyn Fn() -> Result<DeviceStates, SnapshotError> + Send + Sync>,
    pub(crate) shares: usize,
}

impl SnapshotSource {
    /// Refuses to write over the file this VM's RAM is mapped from (it
    /// would change under the running guest), and a state file that is
    /// the memory file.
    fn check_targets(&self, files: &SnapshotFiles) -> Result<(), SnapshotError> {
        use std::os::unix::fs::MetadataExt;
        if files.state == files.memory {
            return Err(SnapshotError::Unsupported(format!(
                "the state and memory files are both {}",
                files.memory.display()
            )));
        }
        let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let backing = self
            .backing_file
            .as_ref()
            .and_then(|b| [&files.memory, &files.state].into_iter().find(|p| id(p) == Some(b.id)));
        if let Some(path) = backing {
            return Err(SnapshotError::Unsupported(format!(
                "{} is the memory file this VM was restored from and its RAM is mapped from: write the snapshot \
                 to another file",
                path.display()
            )));
        }
        Ok(())
    }

    /// Writes the paused VM to `files`: the vCPUs hand in their state from
    /// their parked threads, then the devices', the in-kernel devices' and
    /// the RAM are read; memory is written first, the state file last.
    pub(crate) fn take(&self, control: &RunControl, files: &SnapshotFiles) -> Result<SnapshotInfo, SnapshotError> {
        let start = Instant::now();
        if self.shares > 0 {
            return Err(SnapshotError::Unsupported(format!(
                "it has {} shared director{} (virtio-9p): the guest's open files are host descriptors",
                self.shares,
                if self.shares == 1 { "y" } else { "ies" }
            )));
        }
        self.check_targets(files)?;
        self.slots.clear();
        match control.send_errand() {
            Ok(true) => {}
            Ok(false) => return Err(SnapshotError::NotPaused),
            Err(_) => return Err(SnapshotError::Unsupported("the VM has ended".into())),
        }
        let vcpus: Vec<VcpuState> = self.slots.collect(VCPU_STATE_TIMEOUT)?;
        let devices = (self.devices)()?;
        let k = save_kernel_state(&self.vm_fd)?;
        let state = VmState {
            ember_version: env!("CARGO_PKG_VERSION").to_string(),
            cpu: CpuModel::host(cpuid::host_cpuid),
            machine: self.machine.clone(),
            vcpus,
            pic_master: k.pic_master,
            pic_slave: k.pic_slave,
            ioapic: k.ioapic,
            pit: k.pit,
            clock: k.clock,
            devices,
        };
        let mem_file = snapshot::create_memory_file(&files.memory)?;
        let backing = self.backing_file.as_ref().map(|b| b.file.as_ref());
        let written = memory_file::write(&self.mem, &mem_file, backing, self.pagemap.as_ref())?;
        let state_bytes = snapshot::write_state(&files.state, &state)?;
        Ok(SnapshotInfo { state_bytes, memory_bytes: written.len, memory_written: written.data, took: start.elapsed() })
    }
}
