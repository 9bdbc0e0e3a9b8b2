//! The register-access interface between a vCPU exit and a device.

/// A device that answers guest register accesses in an address range.
///
/// `offset` is relative to the start of the range the device was placed at,
/// so one implementation serves any base address. The length of `data` is
/// the access width (1, 2, 4 or 8 bytes). Accesses come from any vCPU thread;
/// the VMM serialises them with a lock per device.
///
/// Guest writes are hostile input: an implementation must accept any offset,
/// width and value without panicking.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
