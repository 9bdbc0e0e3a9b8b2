//! Building a VM from its configuration, running it, and stopping it.
//!
//! Data flows one way: [`VmConfig`] → [`Vm::new`] → [`Vm::start`]
//! ([`RunningVm`]: vCPU threads and the event loop) → [`RunningVm::wait`]
//! ([`VmExit`]). [`Vm::new`] is a sequence of named steps, one concern
//! each, in the order that is cheapest on KVM:
//!
//! 1. the configuration is validated, once;
//! 2. [`VmPrelude`]: `/dev/kvm`, the VM, the vCPU kick handler, and the
//!    MSR filter that denies the PMU's MSRs: first, as setting it once
//!    memory is registered costs an SRCU grace period (~12 ms here); KVM's
//!    CPUID and MSR list. It needs no configuration, so it can be made
//!    ahead ([`Vm::new_with`]);
//! 3. guest RAM is created and registered with KVM ([`GuestRam`]), before
//!    the irqchip: registering it after costs ~7.5 ms on the PVM hosts
//!    ember is developed on, ~0.06 ms before;
//! 4. [`create_irqchip`]: TSS, identity map, IOAPIC/PIC/LAPIC, PIT;
//! 5. devices ([`DeviceManager`]): legacy, then virtio;
//! 6. [`boot::load`]: kernel, initrd, boot page tables;
//! 7. the machine description ([`machine::describe`]): command line, memory
//!    map, zero page or PVH start info, MP table, ACPI tables;
//! 8. [`create_vcpus`], last: the irqchip must exist before them.

mod snapshot;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ember_devices::legacy::{I8042Error, I8042};
use ember_devices::virtio::net::{NetCounters, NetStats};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, Entry};
use crate::bus::Bus;
use crate::code_pages::CodePages;
use crate::config::{SerialConfig, VmConfig};
use crate::cpuid::{self, CpuidOptions};
use crate::device_manager::DeviceManager;
use crate::error::{io_err, kvm_err, Error};
use crate::event_loop::EventLoop;
use crate::exit::{ExitSignal, VmExit};
use crate::layout;
use crate::machine;
use crate::memory::{GuestRam, RamLayout};
use crate::run_control::{PauseError, RunControl};
use crate::seccomp::{ThreadFilters, ThreadKind};
use crate::snapshot::state::Machine;
use crate::snapshot::{RestoreConfig, SnapshotError, SnapshotFiles, SnapshotInfo};
use crate::sync::lock;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, SaveContext, StateSlots, Vcpu, VcpuRunner};
use snapshot::SnapshotSource;

/// Step 2: KVM and an empty VM, the part of a VM's construction that needs
/// no configuration: `/dev/kvm` opened, the VM created, the vCPU kick
/// handler installed, the PMU's MSRs denied, and what the later steps ask
/// KVM (its CPUID, its MSR list) asked once.
///
/// [`Vm::new`] makes one itself; a caller that knows a VM is coming before
/// it knows the VM's configuration (`ember serve`, while a client sends
/// the configuration over the API) makes one ahead with
/// [`VmPrelude::new`] and hands it to [`Vm::new_with`], which takes that
/// much off the time from `InstanceStart` to the guest's first
/// instruction (docs/api-socket.md has the figures).
pub struct VmPrelude {
    kvm: Kvm,
    vm_fd: VmFd,
    /// KVM's supported CPUID, completed from the host's.
    cpuid: CpuId,
    /// `KVM_CAP_TSC_DEADLINE_TIMER`.
    tsc_deadline: bool,
    save_ctx: SaveContext,
}

impl VmPrelude {
    /// Opens `/dev/kvm`, creates the VM and denies it the PMU's MSRs: first,
    /// as setting the MSR filter once memory is registered costs an SRCU
    /// grace period (12.2 ms measured with strace here, against ~0.1 ms
    /// on the fresh VM, most likely an expedited grace period, which SRCU
    /// grants when nothing ran on it just before).
    pub fn new() -> Result<VmPrelude, Error> {
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        vcpu::install_kick_handler().map_err(io_err("installing the vCPU kick signal handler"))?;
        let vm_fd = kvm.create_vm().map_err(kvm_err(None, "KVM_CREATE_VM"))?;
        if kvm.check_extension(Cap::X86MsrFilter) {
            vcpu::deny_msrs(&vm_fd, cpuid::PMU_MSR_RANGES)?;
        } else {
            log::debug!("KVM has no MSR filter: the guest's PMU probe reaches KVM");
        }
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err(None, "KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::fill_from_host(&mut cpuid, cpuid::host_cpuid);
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let save_ctx = SaveContext::new(&kvm);
        Ok(VmPrelude { kvm, vm_fd, cpuid, tsc_deadline, save_ctx })
    }

    /// Checks `config`'s vCPU count against KVM's limit.
    fn check(&self, config: &VmConfig) -> Result<(), Error> {
        let max = self.kvm.get_max_vcpus();
        if config.vcpus as usize > max {
            return Err(Error::TooManyVcpus { requested: config.vcpus, max });
        }
        Ok(())
    }
}

/// Step 4: KVM's TSS and identity-map pages, the in-kernel irqchip (IOAPIC,
/// PICs, local APICs) and PIT. Guest RAM must be registered already.
fn create_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(layout::KVM_TSS_START as usize).map_err(kvm_err(None, "KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START).map_err(kvm_err(None, "KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err(None, "KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err(None, "KVM_CREATE_PIT2"))?;
    Ok(())
}

/// Step 8: the vCPUs with their CPUID (no PMU: its MSRs were denied in
/// step 2); the boot vCPU at the kernel's entry.
fn create_vcpus(vm: &VmFd, supported: &CpuId, tsc_deadline: bool, count: u8, entry: Entry) -> Result<Vec<Vcpu>, Error> {
    let opts = CpuidOptions { vcpus: count, hide_cx16: cpuid::host_emulates_guests(), tsc_deadline };
    let mut vcpus = Vec::with_capacity(count as usize);
    for id in 0..count {
        let v = Vcpu::new(vm, id, &cpuid::for_vcpu(supported, id, opts))?;
        if id == 0 {
            v.set_boot_entry(entry)?;
        }
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// Steps 2 to 5, which a new VM and a restored one share: KVM and the VM,
/// guest RAM (`ram` makes it) registered before the irqchip, the exit
/// signal, and the devices.
struct Machinery {
    kvm: Kvm,
    vm_fd: Arc<VmFd>,
    cpuid: CpuId,
    tsc_deadline: bool,
    save_ctx: SaveContext,
    ram: GuestRam,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
}

impl Machinery {
    fn build(
        config: &VmConfig,
        prelude: Option<VmPrelude>,
        ram: impl FnOnce() -> Result<GuestRam, crate::memory::MemoryError>,
    ) -> Result<Machinery, Error> {
        let prelude = match prelude {
            Some(p) => p,
            None => VmPrelude::new()?,
        };
        prelude.check(config)?;
        let VmPrelude { kvm, vm_fd, cpuid, tsc_deadline, save_ctx } = prelude;
        let vm_fd = Arc::new(vm_fd);
        // Before the irqchip: see the module documentation.
        let ram = ram()?;
        ram.register(&vm_fd)?;
        create_irqchip(&vm_fd)?;
        let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the exit eventfd"))?);
        let mut devices = DeviceManager::new();
        devices.add_legacy_devices(&vm_fd, config, &exit)?;
        devices.add_virtio_devices(&vm_fd, ram.memory(), ram.layout(), config)?;
        Ok(Machinery { kvm, vm_fd, cpuid, tsc_deadline, save_ctx, ram, exit, devices })
    }
}

/// A VM that has been built and not yet started.
pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    vm_fd: Arc<VmFd>,
    ram: GuestRam,
    vcpus: Vec<Vcpu>,
    devices: DeviceManager,
    exit: Arc<ExitSignal>,
    cmdline: String,
    /// The kernel's entry; `None` for a VM restored from a snapshot.
    entry: Option<Entry>,
    /// What a snapshot needs to know about KVM.
    save_ctx: SaveContext,
    /// The machine's shape, as a snapshot records it.
    machine: Machine,
}

impl Vm {
    /// Builds everything the VM needs (the steps in the module
    /// documentation), in the order that is cheapest on KVM.
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        Vm::build(config, None)
    }

    /// [`Vm::new`] on a [`VmPrelude`] made ahead of the configuration.
    pub fn new_with(config: VmConfig, prelude: VmPrelude) -> Result<Vm, Error> {
        Vm::build(config, Some(prelude))
    }

    fn build(config: VmConfig, prelude: Option<VmPrelude>) -> Result<Vm, Error> {
        config.validate()?;
        let Machinery { kvm, vm_fd, cpuid, tsc_deadline, save_ctx, ram, exit, devices } =
            Machinery::build(&config, prelude, || GuestRam::create(RamLayout::new(config.memory)))?;

        let boot = boot::load(&ram, &config)?;
        let cmdline = devices.kernel_cmdline(&config.cmdline, config.virtio_mmio_cmdline);
        machine::describe(&ram, &boot, &cmdline, config.vcpus, &devices.acpi_devices())?;
        let vcpus = create_vcpus(&vm_fd, &cpuid, tsc_deadline, config.vcpus, boot.entry())?;
        log::info!("kernel command line: {cmdline}");
        log::debug!("entry: {:?}, initrd: {:?}", boot.entry(), boot.initrd);

        let machine = snapshot::machine_of(&config, &devices.macs, &cmdline);
        Ok(Vm {
            config,
            _kvm: kvm,
            vm_fd,
            ram,
            vcpus,
            devices,
            exit,
            cmdline,
            entry: Some(boot.entry()),
            save_ctx,
            machine,
        })
    }

    /// Builds the VM a snapshot describes, with its memory, vCPUs, in-kernel
    /// devices and devices as they were: [`Vm::start`] then carries on
    /// where the snapshot's VM stopped. The same steps as [`Vm::new`], with
    /// RAM mapped from the memory file instead of a kernel loaded, and the
    /// saved state put in last (the irqchip, PIT and clock, then each
    /// vCPU, then the devices).
    pub fn restore(rc: RestoreConfig) -> Result<Vm, Error> {
        Vm::restore_from(rc, None)
    }

    /// [`Vm::restore`] on a [`VmPrelude`] made ahead of the request.
    pub fn restore_with(rc: RestoreConfig, prelude: VmPrelude) -> Result<Vm, Error> {
        Vm::restore_from(rc, Some(prelude))
    }

    fn restore_from(rc: RestoreConfig, prelude: Option<VmPrelude>) -> Result<Vm, Error> {
        let host = crate::snapshot::CpuModel::host(cpuid::host_cpuid);
        let state = crate::snapshot::read_state(&rc.files.state, &host)?;
        let config = snapshot::config_for_restore(&state, &rc);
        config.validate()?;
        let mem_file = crate::snapshot::open_memory_file(&rc.files.memory, config.memory)?;
        let Machinery { kvm, vm_fd, save_ctx, ram, exit, mut devices, .. } =
            Machinery::build(&config, prelude, || {
                GuestRam::from_file(RamLayout::new(config.memory), &mem_file, rc.backing)
            })?;
        if devices.macs.iter().zip(&state.machine.nets).any(|(m, n)| *m != n.mac) {
            return Err(SnapshotError::Inconsistent("a NIC's MAC differs from the snapshot's".into()).into());
        }
        snapshot::restore_kernel_state(&vm_fd, &state)?;
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for (id, s) in state.vcpus.iter().enumerate() {
            let v = Vcpu::create_bare(&vm_fd, id as u8)?;
            v.restore_state(s)?;
            vcpus.push(v);
        }
        devices.restore_states(&state.devices)?;
        let cmdline = state.machine.cmdline.clone();
        let machine = state.machine;
        log::info!("restored from {}: {} vCPU(s), {} MiB", rc.files.state.display(), config.vcpus, config.memory >> 20);
        Ok(Vm { config, _kvm: kvm, vm_fd, ram, vcpus, devices, exit, cmdline, entry: None, save_ctx, machine })
    }

    /// The kernel command line exactly as the guest receives it.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Whether the kernel is entered through PVH (else the Linux 64-bit
    /// boot protocol).
    pub fn uses_pvh(&self) -> bool {
        matches!(self.entry, Some(Entry::Pvh(_)))
    }

    /// The guest's memory (for inspection by embedders and tests).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// The configuration this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Starts the event loop and one thread per vCPU.
    pub fn start(self) -> Result<RunningVm, Error> {
        self.start_with(false)
    }

    /// Starts the VM's threads with every one parked at once, before the
    /// guest runs an instruction: [`VmHandle::resume`] lets it run (e.g. a
    /// restored VM, to be resumed when its caller is ready).
    pub fn start_paused(self) -> Result<RunningVm, Error> {
        self.start_with(true)
    }

    fn start_with(self, paused: bool) -> Result<RunningVm, Error> {
        let Vm { vm_fd, ram, vcpus, devices, exit, config, save_ctx, machine, .. } = self;
        let device_states = devices.state_reader();
        let DeviceManager { pio, mmio, mut subscribers, console_input, net_counters, i8042, .. } = devices;
        let slots = Arc::new(StateSlots::new(save_ctx, vcpus.len()));
        // Read while /proc is in reach (before a chroot), for snapshots.
        let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
        let snap = Arc::new(Mutex::new(Some(Arc::new(SnapshotSource {
            vm_fd: vm_fd.clone(),
            mem: ram.memory().clone(),
            backing_file: ram.backing_file().cloned(),
            pagemap,
            machine,
            slots: slots.clone(),
            devices: device_states,
            shares: config.shares.len(),
        }))));
        let raw_terminal = match (&config.serial, &console_input) {
            (SerialConfig::Stdio, Some(_)) => {
                RawTerminal::enter(0).map_err(io_err("setting the terminal to raw mode"))?
            }
            _ => None,
        };
        if let Some(ci) = console_input {
            subscribers.push(Arc::new(Mutex::new(ci)));
        }
        // seccomp filters are built now and installed by each thread, which
        // then waits at the gate: every vCPU thread, the event loop and this
        // thread.
        let filters =
            ThreadFilters::new(config.seccomp, vcpus.len() + 2, config.has_pci_devices(), !config.shares.is_empty())?;
        // The code pages to give back once the VM runs: their list is
        // opened while /proc is still in reach (before a chroot), and read
        // and acted on by the event loop, [`CODE_PAGES_AFTER`] the start.
        let code_pages = if config.drop_code_pages { CodePages::open() } else { None };
        // Everything is open: drop privileges before any thread exists.
        if let Some(j) = &config.jail {
            j.enter()?;
        }

        // Every vCPU thread and the event loop read `control`; the event
        // loop is woken for it through `event_wake`.
        let members = vcpus.len() + 1;
        let control = Arc::new(if paused { RunControl::paused(members) } else { RunControl::new(members) });
        let event_wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(io_err("creating the event loop's wake-up eventfd"))?;
        let mut event_loop = EventLoop::new(exit.eventfd(), &event_wake, control.clone(), subscribers)?;
        if let Some(pages) = code_pages {
            event_loop = event_loop.with_errand(CODE_PAGES_AFTER, move || {
                pages.release();
            });
        }
        let (ev_filters, ev_exit, ev_control) = (filters.clone(), exit.clone(), control.clone());
        let event_thread = std::thread::Builder::new()
            .name("ember-events".into())
            .spawn(move || {
                crate::terminal::block_termination_signals();
                if let Err(e) = ev_filters.enter(ThreadKind::Events) {
                    ev_exit.request(VmExit::VmmError { message: format!("event loop thread: {e}") });
                    ev_control.leave();
                    return;
                }
                event_loop.run()
            })
            .map_err(io_err("spawning the event loop thread"))?;

        let vcpu_threads = spawn_vcpus(vcpus, Arc::new(pio), Arc::new(mmio), &exit, &control, &filters, &slots);
        let waker = Arc::new(Waker {
            vcpus: Mutex::new(vcpu_threads.iter().map(|t| t.as_pthread_t()).collect()),
            event_loop: event_wake,
        });
        if let Err(e) = filters.enter(ThreadKind::Vmm) {
            exit.request(VmExit::VmmError { message: format!("main thread: {e}") });
        }
        Ok(RunningVm {
            exit,
            control,
            waker,
            vcpu_threads,
            event_thread: Some(event_thread),
            raw_terminal,
            serial: config.serial,
            _vm_fd: vm_fd,
            _ram: ram,
            finished: None,
            net_counters,
            i8042,
            snap,
        })
    }

    /// Starts the VM and waits for it to end.
    pub fn run(self) -> Result<VmExit, Error> {
        Ok(self.start()?.wait())
    }
}

/// One thread per vCPU, each entering its seccomp filter and the gate
/// before the guest. A thread that cannot be spawned ends the VM; the gate
/// is passed (and `control` left) on behalf of the vCPUs that never
/// started.
fn spawn_vcpus(
    vcpus: Vec<Vcpu>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: &Arc<ExitSignal>,
    control: &Arc<RunControl>,
    filters: &Arc<ThreadFilters>,
    slots: &Arc<StateSlots>,
) -> Vec<JoinHandle<()>> {
    let count = vcpus.len();
    let mut threads = Vec::with_capacity(count);
    for v in vcpus {
        let id = v.id();
        let runner = VcpuRunner::new(v, pio.clone(), mmio.clone(), exit.clone(), control.clone(), slots.clone());
        let (filters_t, exit_t, control_t) = (filters.clone(), exit.clone(), control.clone());
        let t = std::thread::Builder::new().name(format!("ember-vcpu{id}")).stack_size(256 << 10).spawn(move || {
            crate::terminal::block_termination_signals();
            if let Err(e) = filters_t.enter(ThreadKind::Vcpu) {
                exit_t.request(VmExit::VcpuError { vcpu: id, message: e.to_string() });
                control_t.leave();
                return;
            }
            runner.run()
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                exit.request(VmExit::VcpuError { vcpu: id, message: format!("cannot spawn thread: {e}") });
                let missing = count - threads.len();
                filters.stand_in(missing);
                (0..missing).for_each(|_| control.leave());
                break;
            }
        }
    }
    threads
}

/// When the event loop gives back the code pages, after the VM started:
/// late enough to leave the host's cores to the guest's first
/// instructions and to `InstanceStart`'s answer (on a 2-core host the
/// event loop doing it at once delayed both), early enough for an idle
/// VM's RSS to drop within a blink.
const CODE_PAGES_AFTER: Duration = Duration::from_millis(100);

/// How long [`VmHandle::pause`] waits for every thread to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Wakes the VM's threads so that they read a new request at once: the
/// vCPU threads with the kick signal (out of `KVM_RUN`), the event loop
/// through its wake-up eventfd (out of `epoll_wait`).
struct Waker {
    /// The vCPU threads, while they may be signalled: emptied (under the
    /// lock) before they are joined, so no `pthread_t` is used after.
    vcpus: Mutex<Vec<libc::pthread_t>>,
    event_loop: EventFd,
}

impl Waker {
    fn wake_all(&self) {
        for &t in lock(&self.vcpus).iter() {
            // SAFETY: `t` is a thread of this VM that has not been joined
            // (the list is emptied before joining, under this lock).
            unsafe { libc::pthread_kill(t, vcpu::kick_signal()) };
        }
        let _ = self.event_loop.write(1);
    }

    fn forget_threads(&self) {
        lock(&self.vcpus).clear();
    }
}

/// A running VM.
pub struct RunningVm {
    exit: Arc<ExitSignal>,
    control: Arc<RunControl>,
    waker: Arc<Waker>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    raw_terminal: Option<RawTerminal>,
    serial: SerialConfig,
    _vm_fd: Arc<VmFd>,
    _ram: GuestRam,
    finished: Option<VmExit>,
    net_counters: Vec<(String, Arc<NetCounters>)>,
    i8042: Option<Arc<Mutex<I8042>>>,
    /// What a snapshot reads; emptied when the VM ends, so that a handle
    /// kept after does not keep its memory, devices and files.
    snap: SharedSnapshotSource,
}

/// The VM's [`SnapshotSource`] while it lives.
type SharedSnapshotSource = Arc<Mutex<Option<Arc<SnapshotSource>>>>;

/// Stops, pauses or resumes a VM, or presses keys on its keyboard, from
/// any thread.
#[derive(Clone)]
pub struct VmHandle {
    exit: Arc<ExitSignal>,
    control: Arc<RunControl>,
    waker: Arc<Waker>,
    i8042: Option<Arc<Mutex<I8042>>>,
    snap: SharedSnapshotSource,
}

impl VmHandle {
    /// Asks the VM to stop; [`RunningVm::wait`] then returns
    /// [`VmExit::Stopped`] (unless the VM had already ended otherwise). A
    /// paused VM stops too.
    pub fn stop(&self) {
        self.exit.request(VmExit::Stopped);
    }

    /// How the VM ended, if it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.exit.get()
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard (the i8042's, raising
    /// IRQ 1), as Firecracker's `SendCtrlAltDel` does. A Linux guest with
    /// the i8042 and atkbd drivers reboots (ember then ends with
    /// [`VmExit::Reset`]) or tells its init, as its Ctrl-Alt-Del setting
    /// says. Fails if the guest has turned its keyboard off or is not
    /// reading it.
    pub fn send_ctrl_alt_del(&self) -> Result<(), I8042Error> {
        match &self.i8042 {
            Some(d) => lock(d).send_ctrl_alt_del(),
            None => Err(I8042Error::KeyboardDisabled),
        }
    }

    /// Pauses the VM. Returns once every vCPU thread has left `KVM_RUN` and
    /// parked and the event loop has parked: from then on no guest
    /// instruction runs and no virtqueue, TAP or console input is served
    /// (what arrives meanwhile is served after [`VmHandle::resume`]). Guest
    /// time (kvmclock, the TSC) keeps running. Pausing a paused VM succeeds
    /// at once.
    ///
    /// Fails if the VM has ended, or if a thread does not park within 2 s
    /// (a vCPU blocked in a device, e.g. writing the console into a full
    /// pipe); the VM then runs on.
    pub fn pause(&self) -> Result<(), PauseError> {
        if self.exit.is_set() {
            return Err(PauseError::Ended);
        }
        self.control.pause(&|| self.waker.wake_all(), PAUSE_TIMEOUT)
    }

    /// Lets a paused VM run again. Resuming a running VM succeeds.
    pub fn resume(&self) -> Result<(), PauseError> {
        if self.exit.is_set() {
            return Err(PauseError::Ended);
        }
        self.control.resume()
    }

    /// Whether the VM is paused (a [`VmHandle::pause`] succeeded and no
    /// resume followed).
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Writes the paused VM to `files` (docs/snapshot.md): its RAM to the
    /// memory file, everything else to the state file; both are replaced
    /// if they exist and synced before this returns. The VM stays paused;
    /// resume it, stop it, or let it go and [`Vm::restore`] the files in
    /// another process. Fails if the VM is not paused, has shared
    /// directories, or a file cannot be written.
    ///
    /// With seccomp filters on, call it from a thread whose filter allows
    /// it: the API thread of `ember serve` (docs/security.md).
    pub fn snapshot(&self, files: &SnapshotFiles) -> Result<SnapshotInfo, SnapshotError> {
        let Some(source) = lock(&self.snap).clone() else {
            return Err(SnapshotError::Unsupported("the VM has ended".into()));
        };
        if !self.control.is_paused() {
            return Err(SnapshotError::NotPaused);
        }
        source.take(&self.control, files)
    }
}

impl RunningVm {
    /// A handle another thread can use to stop, pause or resume the VM.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            exit: self.exit.clone(),
            control: self.control.clone(),
            waker: self.waker.clone(),
            i8042: self.i8042.clone(),
            snap: self.snap.clone(),
        }
    }

    /// A file descriptor that becomes readable (`poll(2)`, epoll) once the
    /// VM has ended, for callers that wait for other events too (signals,
    /// sockets); [`RunningVm::wait`] then returns at once. Do not read it.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd lives in `self.exit` as long as `self`, which
        // the returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.exit.eventfd().as_raw_fd()) }
    }

    /// The counters of each virtio-net device (name, counters), readable
    /// while the VM runs.
    pub fn net_stats(&self) -> Vec<(String, NetStats)> {
        DeviceManager::net_stats(&self.net_counters)
    }

    /// Waits up to `timeout` for the VM to end; `None` if it is still
    /// running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        self.exit.wait_timeout(Some(timeout))
    }

    /// Waits for the VM to end, then stops every thread and restores the
    /// terminal.
    pub fn wait(mut self) -> VmExit {
        let exit = self.exit.wait_timeout(None).expect("wait without timeout returns an exit");
        self.shutdown();
        exit
    }

    fn shutdown(&mut self) {
        if self.finished.is_some() {
            return;
        }
        self.exit.request(VmExit::Stopped);
        // Wakes parked threads too; no handle signals the vCPU threads after.
        self.control.stop();
        self.waker.forget_threads();
        // Kick every vCPU out of KVM_RUN until its thread has finished.
        for t in self.vcpu_threads.drain(..) {
            while !t.is_finished() {
                // SAFETY: the thread is alive (not finished), so its pthread_t is valid.
                unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = t.join();
        }
        if let Some(t) = self.event_thread.take() {
            let _ = t.join();
        }
        self.raw_terminal.take();
        lock(&self.snap).take();
        for (name, c) in &self.net_counters {
            log::info!("{name}: {:?}", c.snapshot());
        }
        if let SerialConfig::Capture(c) = &self.serial {
            c.close();
        }
        self.finished = self.exit.get();
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
