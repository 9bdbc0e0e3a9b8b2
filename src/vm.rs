//! Building a VM from its configuration, running it, and stopping it.
//!
//! Data flows one way: [`VmConfig`] → [`Vm::new`] (memory, KVM objects,
//! kernel, devices, vCPUs) → [`Vm::start`] ([`RunningVm`]: vCPU threads and
//! the event loop) → [`RunningVm::wait`] ([`VmExit`]).

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ember_devices::bus::BusDevice;
use ember_devices::interrupt::IrqLine;
use ember_devices::legacy::{
    Cmos, DebugExit, ExitLine, QuietPorts, SerialDevice, SerialOutput, I8042, QUIET_PORT_RANGES,
};
use ember_devices::virtio::block::{Block, BlockConfig};
use ember_devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use ember_devices::virtio::net::{format_mac, Net, NetConfig as NetDeviceConfig, NetCounters, NetStats};
use ember_devices::virtio::VirtioDevice;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use virtio_bindings::bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, Entry};
use crate::bus::Bus;
use crate::config::{SerialConfig, VmConfig};
use crate::console::ConsoleInput;
use crate::cpuid::{self, CpuidOptions};
use crate::error::{io_err, kvm_err, Error};
use crate::event_loop::{EventLoop, Subscriber};
use crate::exit::{ExitSignal, VmExit};
use crate::layout;
use crate::machine;
use crate::memory::{GuestRam, RamLayout};
use crate::seccomp::{self, ThreadKind};
use crate::sync::lock;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, Vcpu, VcpuRunner};

/// Puts `device` behind a virtio-mmio transport at `base`: its interrupt is
/// an irqfd on `irq`, and each queue's notification (a write of the queue
/// index to QueueNotify) is an ioeventfd, so the data path never exits to
/// a vCPU thread in user space.
fn attach_virtio(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    index: usize,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<Arc<Mutex<MmioTransport>>, Error> {
    let verr = |source: io::Error| Error::Virtio { index, source };
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(verr)?;
    vm_fd.register_irqfd(&irq_evt, irq).map_err(kvm_err(None, "KVM_IRQFD (virtio)"))?;
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(irq_evt)).map_err(verr)?;
    for (q, evt) in transport.queue_events().iter().enumerate() {
        let addr = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
        vm_fd.register_ioevent(evt, &addr, q as u32).map_err(kvm_err(None, "KVM_IOEVENTFD (virtio)"))?;
    }
    Ok(Arc::new(Mutex::new(transport)))
}

#[cfg(feature = "seccomp-probe")]
struct SeccompProbe;

#[cfg(feature = "seccomp-probe")]
impl BusDevice for SeccompProbe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&0x5e) {
            // SAFETY: libc::sysinfo is plain integers, for which all-zero
            // bytes are a valid value.
            let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
            // SAFETY: sysinfo fills the struct we pass.
            let r = unsafe { libc::syscall(libc::SYS_sysinfo, &mut info) };
            eprintln!("ember: seccomp-probe: sysinfo returned {r}");
        }
    }
}

/// Whether this host's KVM runs guest code by emulating it (PVM), which
/// lacks some instructions a VMM can hide (CMPXCHG16B).
pub fn host_emulates_guests() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Writes to stdout with no buffering in between.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid buffer to fd 1.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Forwards to a writer shared with the caller.
struct Shared(crate::config::SharedWriter);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0).flush()
    }
}

/// Discards everything.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A VM that has been built and not yet started.
pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    pio: Bus,
    mmio: Bus,
    exit: Arc<ExitSignal>,
    subscribers: Vec<Subscriber>,
    console_input: Option<ConsoleInput>,
    cmdline: String,
    entry: Entry,
    net_stats: Vec<(String, Arc<NetCounters>)>,
}

impl Vm {
    /// Builds everything the VM needs, in the order that is cheapest on
    /// KVM: guest RAM is registered before the irqchip exists (registering
    /// it after costs milliseconds on some hosts).
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        config.validate()?;
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        let max = kvm.get_max_vcpus();
        if config.vcpus as usize > max {
            return Err(Error::TooManyVcpus { requested: config.vcpus, max });
        }
        vcpu::install_kick_handler().map_err(io_err("installing the vCPU kick signal handler"))?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err(None, "KVM_CREATE_VM"))?);

        let ram = GuestRam::create(RamLayout::new(config.memory))?;
        ram.register(&vm_fd)?;
        let mem = ram.memory().clone();
        vm_fd.set_tss_address(layout::KVM_TSS_START as usize).map_err(kvm_err(None, "KVM_SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(kvm_err(None, "KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm_fd.create_irq_chip().map_err(kvm_err(None, "KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm_fd.create_pit2(pit).map_err(kvm_err(None, "KVM_CREATE_PIT2"))?;

        // The kernel, its command line, initrd and the machine description.
        let boot_info = boot::load(&ram, &config)?;

        let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the exit eventfd"))?);
        let mut pio = Bus::new("port I/O");
        let mut mmio = Bus::new("MMIO");
        let subscribers: Vec<Subscriber> = Vec::new();

        // COM1.
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?;
        vm_fd.register_irqfd(&serial_irq, layout::SERIAL_IRQ).map_err(kvm_err(None, "KVM_IRQFD (COM1)"))?;
        let (out, input): (SerialOutput, bool) = match &config.serial {
            SerialConfig::Stdio => (Box::new(Stdout), true),
            SerialConfig::File(p) => {
                let f = File::create(p).map_err(|source| Error::SerialFile { path: p.clone(), source })?;
                (Box::new(f), false)
            }
            SerialConfig::Capture(c) => (Box::new(c.clone()), false),
            SerialConfig::Writer(w) => (Box::new(Shared(w.clone())), false),
            SerialConfig::None => (Box::new(Sink), false),
        };
        let input_ready = if input {
            Some(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?)
        } else {
            None
        };
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            Arc::new(serial_irq) as Arc<dyn IrqLine>,
            out,
            input_ready.as_ref().map(|e| e.try_clone()).transpose().map_err(io_err("duplicating an eventfd"))?,
        )));
        pio.insert(layout::COM1_PORT, layout::COM1_PORT_LEN, serial.clone())?;
        let console_input = input_ready.map(|evt| {
            // SAFETY: isatty only inspects fd 0.
            let tty = unsafe { libc::isatty(0) } == 1;
            ConsoleInput::new(0, tty, serial.clone(), evt, exit.clone())
        });

        let exit_line: Arc<dyn ExitLine> = exit.clone();
        pio.insert(layout::I8042_PORT, layout::I8042_PORT_LEN, Arc::new(Mutex::new(I8042::new(exit_line.clone()))))?;
        pio.insert(layout::CMOS_PORT, layout::CMOS_PORT_LEN, Arc::new(Mutex::new(Cmos::new())))?;
        if config.debug_exit {
            pio.insert(
                layout::DEBUG_EXIT_PORT,
                layout::DEBUG_EXIT_PORT_LEN,
                Arc::new(Mutex::new(DebugExit::new(exit_line))),
            )?;
        }
        #[cfg(feature = "seccomp-probe")]
        pio.insert(layout::SECCOMP_PROBE_PORT, 1, Arc::new(Mutex::new(SeccompProbe)))?;
        let quiet: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(QuietPorts));
        for &(base, len) in QUIET_PORT_RANGES {
            pio.insert(base as u64, len as u64, quiet.clone())?;
        }

        // virtio devices: disks, then NICs, one MMIO slot and IRQ each.
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for d in &config.disks {
            let cfg = BlockConfig { path: d.path.clone(), readonly: d.read_only, id: d.id.clone() };
            devices.push(Box::new(Block::new(&cfg)?));
        }
        let mut net_stats = Vec::new();
        for (i, n) in config.nets.iter().enumerate() {
            let net = Net::new(&NetDeviceConfig { tap: n.tap.clone(), mac: n.mac })?;
            log::info!("net{i}: tap {} mac {}", n.tap, format_mac(&net.mac()));
            net_stats.push((format!("net{i} ({})", n.tap), net.stats_handle()));
            devices.push(Box::new(net));
        }
        let mut cmdline = config.cmdline.clone();
        let mut subscribers = subscribers;
        for (index, device) in devices.into_iter().enumerate() {
            let (base, irq) = layout::virtio_slot(index);
            let transport = attach_virtio(&vm_fd, &mem, index, device, base, irq)?;
            mmio.insert(base, MMIO_SIZE, transport.clone())?;
            subscribers.push(transport);
            // Linux (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) finds devices here.
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        }
        let cmdline = cmdline.trim_start().to_string();
        machine::describe(&ram, &boot_info, &cmdline, config.vcpus)?;

        // vCPUs last: the irqchip must exist before them.
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err(None, "KVM_GET_SUPPORTED_CPUID"))?;
        let opts = CpuidOptions { vcpus: config.vcpus, hide_cx16: host_emulates_guests() };
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let v = Vcpu::new(&vm_fd, id, &cpuid::for_vcpu(&supported, id, opts))?;
            if id == 0 {
                v.set_boot_entry(boot_info.entry())?;
            }
            vcpus.push(v);
        }
        log::info!("kernel command line: {cmdline}");
        log::debug!("entry: {:?}, initrd: {:?}", boot_info.entry(), boot_info.initrd);

        Ok(Vm {
            config,
            _kvm: kvm,
            vm_fd,
            mem,
            vcpus,
            pio,
            mmio,
            exit,
            subscribers,
            console_input,
            cmdline,
            entry: boot_info.entry(),
            net_stats,
        })
    }

    /// The kernel command line exactly as the guest receives it.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Whether the kernel is entered through PVH (else the Linux 64-bit
    /// boot protocol).
    pub fn uses_pvh(&self) -> bool {
        matches!(self.entry, Entry::Pvh(_))
    }

    /// The guest's memory (for inspection by embedders and tests).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The configuration this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Starts the event loop and one thread per vCPU.
    pub fn start(self) -> Result<RunningVm, Error> {
        let Vm { vm_fd, mem, vcpus, pio, mmio, exit, mut subscribers, console_input, config, net_stats, .. } = self;
        let raw_terminal = match (&config.serial, &console_input) {
            (SerialConfig::Stdio, Some(_)) => {
                RawTerminal::enter(0).map_err(io_err("setting the terminal to raw mode"))?
            }
            _ => None,
        };
        if let Some(ci) = console_input {
            subscribers.push(Arc::new(Mutex::new(ci)));
        }
        // seccomp filters are built now and installed by each thread; with
        // filters on, no vCPU enters the guest until every thread (this one
        // included) has its filter.
        let vcpu_bpf = seccomp::filter(ThreadKind::Vcpu, config.seccomp)?.map(Arc::new);
        let vmm_bpf = seccomp::filter(ThreadKind::Vmm, config.seccomp)?.map(Arc::new);
        let gate = vmm_bpf.as_ref().map(|_| Arc::new(Barrier::new(vcpus.len() + 2)));
        // Everything is open: drop privileges before any thread exists.
        if let Some(j) = &config.jail {
            j.enter()?;
        }

        let event_loop = EventLoop::new(exit.eventfd(), subscribers)?;
        let (ev_bpf, ev_gate, ev_exit) = (vmm_bpf.clone(), gate.clone(), exit.clone());
        let event_thread = std::thread::Builder::new()
            .name("ember-events".into())
            .spawn(move || {
                if let (Some(bpf), Some(gate)) = (ev_bpf, ev_gate) {
                    let r = seccomp::install(ThreadKind::Vmm, &bpf);
                    gate.wait();
                    if let Err(e) = r {
                        ev_exit.request(VmExit::VmmError { message: format!("event loop thread: {e}") });
                        return;
                    }
                }
                event_loop.run()
            })
            .map_err(io_err("spawning the event loop thread"))?;

        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let stop = Arc::new(AtomicBool::new(false));
        let count = vcpus.len();
        let mut vcpu_threads = Vec::with_capacity(count);
        for v in vcpus {
            let runner = VcpuRunner::new(v, pio.clone(), mmio.clone(), exit.clone(), stop.clone());
            let (bpf, vgate, vexit, id) = (vcpu_bpf.clone(), gate.clone(), exit.clone(), vcpu_threads.len() as u8);
            let t = std::thread::Builder::new()
                .name(format!("ember-vcpu{}", vcpu_threads.len()))
                .stack_size(256 << 10)
                .spawn(move || {
                    if let (Some(bpf), Some(vgate)) = (bpf, vgate) {
                        let r = seccomp::install(ThreadKind::Vcpu, &bpf);
                        vgate.wait();
                        if let Err(e) = r {
                            vexit.request(VmExit::VcpuError { vcpu: id, message: e.to_string() });
                            return;
                        }
                    }
                    runner.run()
                });
            match t {
                Ok(t) => vcpu_threads.push(t),
                Err(e) => {
                    exit.request(VmExit::VcpuError {
                        vcpu: vcpu_threads.len() as u8,
                        message: format!("cannot spawn thread: {e}"),
                    });
                    // The gate counts every vCPU: stand in for the missing ones.
                    if let Some(g) = &gate {
                        let g = g.clone();
                        let missing = count - vcpu_threads.len() - 1;
                        for _ in 0..missing {
                            let g = g.clone();
                            std::thread::spawn(move || g.wait());
                        }
                        std::thread::spawn(move || g.wait());
                    }
                    break;
                }
            }
        }
        if let (Some(bpf), Some(gate)) = (&vmm_bpf, &gate) {
            let r = seccomp::install(ThreadKind::Vmm, bpf);
            gate.wait();
            if let Err(e) = r {
                exit.request(VmExit::VmmError { message: format!("main thread: {e}") });
            }
        }
        Ok(RunningVm {
            exit,
            stop,
            vcpu_threads,
            event_thread: Some(event_thread),
            raw_terminal,
            serial: config.serial,
            _vm_fd: vm_fd,
            _mem: mem,
            finished: None,
            net_stats,
        })
    }

    /// Starts the VM and waits for it to end.
    pub fn run(self) -> Result<VmExit, Error> {
        Ok(self.start()?.wait())
    }
}

/// A running VM.
pub struct RunningVm {
    exit: Arc<ExitSignal>,
    stop: Arc<AtomicBool>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    raw_terminal: Option<RawTerminal>,
    serial: SerialConfig,
    _vm_fd: Arc<VmFd>,
    _mem: GuestMemoryMmap,
    finished: Option<VmExit>,
    net_stats: Vec<(String, Arc<NetCounters>)>,
}

/// Stops a VM from any thread.
#[derive(Clone)]
pub struct VmHandle {
    exit: Arc<ExitSignal>,
}

impl VmHandle {
    /// Asks the VM to stop; [`RunningVm::wait`] then returns
    /// [`VmExit::Stopped`] (unless the VM had already ended otherwise).
    pub fn stop(&self) {
        self.exit.request(VmExit::Stopped);
    }

    /// How the VM ended, if it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.exit.get()
    }
}

impl RunningVm {
    /// A handle another thread can use to stop the VM.
    pub fn handle(&self) -> VmHandle {
        VmHandle { exit: self.exit.clone() }
    }

    /// The counters of each virtio-net device (name, counters), readable
    /// while the VM runs.
    pub fn net_stats(&self) -> Vec<(String, NetStats)> {
        self.net_stats.iter().map(|(n, c)| (n.clone(), c.snapshot())).collect()
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
        self.stop.store(true, Ordering::SeqCst);
        // Kick every vCPU out of KVM_RUN until its thread has finished.
        for t in self.vcpu_threads.drain(..) {
            while !t.is_finished() {
                // SAFETY: the thread is alive (not finished), so its pthread_t is valid.
                unsafe {
                    libc::pthread_kill(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t), vcpu::kick_signal())
                };
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = t.join();
        }
        if let Some(t) = self.event_thread.take() {
            let _ = t.join();
        }
        self.raw_terminal.take();
        for (name, c) in &self.net_stats {
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
