//! What a vCPU exit means, decided by a pure function ([`handle_exit`])
//! the run loop acts on. Kept apart from the loop so every exit KVM can
//! report has a unit-tested answer.

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::exit::VmExit;

/// What the run loop does after one `KVM_RUN`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExitAction<'a> {
    /// Back into the guest.
    Resume,
    /// Back into the guest after logging this (an exit ember ignores).
    Ignore(String),
    /// Serve the port access described in `kvm_run` (its size, count and
    /// direction), then resume.
    PortIo,
    /// The guest reads `data.len()` bytes at this MMIO address.
    MmioRead(u64, &'a mut [u8]),
    /// The guest writes `data` at this MMIO address.
    MmioWrite(u64, &'a [u8]),
    /// `KVM_RUN` returned early for a kick (the kick signal set
    /// `immediate_exit`): clear it and look at what the VMM asks of the
    /// vCPU before entering the guest again.
    Kicked,
    /// The VM ends.
    End(VmExit),
    /// The VM ends with a crash report that needs the vCPU's registers.
    Crash(Crash),
}

/// A crash that ends the VM, before its report is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Crash {
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted.
    TripleFault,
    /// `KVM_EXIT_INTERNAL_ERROR`: KVM could not run the guest's code; its
    /// suberror and data are in `kvm_run`.
    InternalError,
    /// `KVM_EXIT_HLT`, which only happens without an in-kernel irqchip;
    /// ember always has one.
    UnexpectedHlt,
    /// An exit ember does not handle.
    Unhandled(String),
}

impl Crash {
    /// The report for vCPU `vcpu` at instruction pointer `rip`; `internal`
    /// is KVM's suberror and data for an internal error.
    pub(crate) fn into_exit(self, vcpu: u8, rip: u64, internal: Option<(u32, Vec<u64>)>) -> VmExit {
        match self {
            Crash::TripleFault => VmExit::TripleFault { vcpu, rip },
            Crash::InternalError => {
                let (suberror, data) = internal.unwrap_or_default();
                VmExit::InternalError { vcpu, suberror, rip, data }
            }
            Crash::UnexpectedHlt => VmExit::VcpuError { vcpu, message: format!("unexpected HLT exit at RIP {rip:#x}") },
            Crash::Unhandled(what) => {
                VmExit::VcpuError { vcpu, message: format!("unhandled KVM exit {what} at RIP {rip:#x}") }
            }
        }
    }
}

/// What the result of one `KVM_RUN` on vCPU `vcpu` means.
pub(crate) fn handle_exit(vcpu: u8, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitAction<'_> {
    match exit {
        Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..)) => ExitAction::PortIo,
        Ok(VcpuExit::MmioRead(addr, data)) => ExitAction::MmioRead(addr, data),
        Ok(VcpuExit::MmioWrite(addr, data)) => ExitAction::MmioWrite(addr, data),
        Ok(VcpuExit::Shutdown) => ExitAction::Crash(Crash::TripleFault),
        Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
            KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_SHUTDOWN => ExitAction::End(VmExit::Reset),
            other => ExitAction::Ignore(format!("vCPU {vcpu}: ignoring KVM system event {other}")),
        },
        Ok(VcpuExit::InternalError) => ExitAction::Crash(Crash::InternalError),
        Ok(VcpuExit::FailEntry(reason, _)) => ExitAction::End(VmExit::FailEntry { vcpu, reason }),
        Ok(VcpuExit::Hlt) => ExitAction::Crash(Crash::UnexpectedHlt),
        Ok(VcpuExit::Intr) => ExitAction::Resume,
        Ok(other) => ExitAction::Crash(Crash::Unhandled(format!("{other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Kicked,
        Err(e) => ExitAction::End(VmExit::VcpuError { vcpu, message: format!("KVM_RUN failed: {e}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_SYSTEM_EVENT_CRASH;

    fn err(errno: i32) -> Result<VcpuExit<'static>, kvm_ioctls::Error> {
        Err(kvm_ioctls::Error::new(errno))
    }

    #[test]
    fn device_accesses_are_served_and_resume() {
        let mut buf = [0u8; 4];
        assert_eq!(handle_exit(0, Ok(VcpuExit::IoIn(0x3f8, &mut buf))), ExitAction::PortIo);
        assert_eq!(handle_exit(0, Ok(VcpuExit::IoOut(0x3f8, &[1]))), ExitAction::PortIo);
        match handle_exit(0, Ok(VcpuExit::MmioRead(0xd000_0000, &mut buf))) {
            ExitAction::MmioRead(addr, data) => {
                assert_eq!(addr, 0xd000_0000);
                data[0] = 7;
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(buf[0], 7, "the action hands out the exit's own buffer");
        assert_eq!(handle_exit(1, Ok(VcpuExit::MmioWrite(0x10, &[1, 2]))), ExitAction::MmioWrite(0x10, &[1, 2]));
        assert_eq!(handle_exit(1, Ok(VcpuExit::Intr)), ExitAction::Resume);
    }

    #[test]
    fn guest_endings() {
        let reset = handle_exit(0, Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])));
        assert_eq!(reset, ExitAction::End(VmExit::Reset));
        let shutdown = handle_exit(0, Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])));
        assert_eq!(shutdown, ExitAction::End(VmExit::Reset));
        assert!(matches!(
            handle_exit(2, Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]))),
            ExitAction::Ignore(m) if m.contains("vCPU 2") && m.contains("system event")
        ));
        assert_eq!(
            handle_exit(3, Ok(VcpuExit::FailEntry(0x80, 1))),
            ExitAction::End(VmExit::FailEntry { vcpu: 3, reason: 0x80 })
        );
    }

    #[test]
    fn crashes_are_reported_with_the_rip() {
        let tf = handle_exit(1, Ok(VcpuExit::Shutdown));
        assert_eq!(tf, ExitAction::Crash(Crash::TripleFault));
        assert_eq!(Crash::TripleFault.into_exit(1, 0x1234, None), VmExit::TripleFault { vcpu: 1, rip: 0x1234 });

        assert_eq!(handle_exit(0, Ok(VcpuExit::InternalError)), ExitAction::Crash(Crash::InternalError));
        assert_eq!(
            Crash::InternalError.into_exit(0, 0xffff, Some((1, vec![0xcc]))),
            VmExit::InternalError { vcpu: 0, suberror: 1, rip: 0xffff, data: vec![0xcc] }
        );

        assert_eq!(handle_exit(0, Ok(VcpuExit::Hlt)), ExitAction::Crash(Crash::UnexpectedHlt));
        let hlt = Crash::UnexpectedHlt.into_exit(0, 0x10, None);
        assert_eq!(hlt, VmExit::VcpuError { vcpu: 0, message: "unexpected HLT exit at RIP 0x10".into() });

        let ExitAction::Crash(c @ Crash::Unhandled(_)) = handle_exit(0, Ok(VcpuExit::Debug(Default::default()))) else {
            panic!("a debug exit is not handled");
        };
        let VmExit::VcpuError { message, .. } = c.into_exit(0, 0x20, None) else { panic!() };
        assert!(message.starts_with("unhandled KVM exit Debug") && message.ends_with("at RIP 0x20"), "{message}");
    }

    #[test]
    fn kicks_and_failures() {
        assert_eq!(handle_exit(0, err(libc::EINTR)), ExitAction::Kicked);
        assert_eq!(handle_exit(0, err(libc::EAGAIN)), ExitAction::Kicked);
        let ExitAction::End(VmExit::VcpuError { vcpu: 4, message }) = handle_exit(4, err(libc::EFAULT)) else {
            panic!("KVM_RUN failing ends the VM");
        };
        assert!(message.starts_with("KVM_RUN failed"), "{message}");
    }
}
