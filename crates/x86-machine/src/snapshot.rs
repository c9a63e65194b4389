//! What a snapshot of the x86-64 board holds: the body of the state file
//! (framed by [`vmm::snapshot`], the same file format as the riscv64
//! board's), how KVM's state is read out of and written back into the
//! vCPUs and the VM, and the check that a restore target matches.
//!
//! KVM's structures (`kvm_regs`, `kvm_sregs`, `kvm_xsave`, the LAPIC page,
//! the PIC/IOAPIC and PIT states, ...) are stored as their exact bytes,
//! hex-encoded ([`Blob`]); each is checked against its type's size on
//! restore. MSRs are stored as index/value pairs: every MSR of
//! `KVM_GET_MSR_INDEX_LIST` the vCPU could read.
//!
//! # The guest's clock
//!
//! The KVM clock and each vCPU's TSC (an MSR) are saved and set back, so
//! the guest continues from the snapshot's time as if paused (Firecracker
//! does the same).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of [`MachineState`] this build writes and reads.
pub const MACHINE_STATE_VERSION: u32 = 1;

/// The board's name in a state file: refuses other boards' files (the
/// riscv64 boards write "riscv64-virt" and "riscv64-spike").
pub const BOARD_NAME: &str = "x86_64-kvm";

/// The machine configuration a snapshot was taken of (shared with the
/// riscv64 boards; `builtin_sbi` is `None` here).
pub use vmm::board::MachineSummary;

/// The exact bytes of a KVM structure; hex in the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        if hex.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("not a hex string"))
            })
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map(Blob)
    }
}

/// KVM structures kept as plain bytes.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` structures of integers (and unions and
/// arrays of them) without implicit padding, for which every byte
/// pattern is a valid value. kvm-bindings derives zerocopy's `IntoBytes`
/// and `FromBytes` for exactly these types under its `serde` feature,
/// which is the proof of both properties.
unsafe trait Pod: Sized {}

// SAFETY: see `Pod`; each is in kvm-bindings' zerocopy-derived list.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}
// SAFETY: as above.
unsafe impl Pod for kvm_cpuid_entry2 {}

fn to_blob<T: Pod>(v: &T) -> Blob {
    // SAFETY: `T: Pod` has no padding, so all its size_of::<T>() bytes are
    // initialised; the slice borrows `v` for the copy only.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) };
    Blob(bytes.to_vec())
}

fn from_blob<T: Pod>(what: &str, b: &Blob) -> Result<T> {
    if b.0.len() != size_of::<T>() {
        return Err(Error::SnapshotState(format!(
            "{what} has {} bytes, this build's KVM structure {}",
            b.0.len(),
            size_of::<T>()
        )));
    }
    // SAFETY: the length was checked, and every byte pattern is a valid
    // `T` (`Pod`); read_unaligned because a Vec<u8> is byte aligned.
    Ok(unsafe { std::ptr::read_unaligned(b.0.as_ptr().cast::<T>()) })
}

/// One vCPU, as KVM_GET_* report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// The CPUID entries the guest saw (`kvm_cpuid_entry2` each): a
    /// restore gives it the same, whatever this host's KVM offers.
    pub cpuid: Vec<Blob>,
    pub regs: Blob,
    pub sregs: Blob,
    pub xsave: Blob,
    pub xcrs: Blob,
    pub debugregs: Blob,
    pub lapic: Blob,
    pub mp_state: Blob,
    pub events: Blob,
    /// (index, value) of every saved MSR, in the order they are set back.
    pub msrs: Vec<(u32, u64)>,
}

/// The VM-wide in-kernel devices: the two 8259s, the IOAPIC, the PIT and
/// the KVM clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub pic_master: Blob,
    pub pic_slave: Blob,
    pub ioapic: Blob,
    pub pit: Blob,
    pub clock: Blob,
}

/// The 16550's registers and receive FIFO (vm-superio's `SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// A qcow2 disk's internal snapshot taken at the same instant.
pub use vmm::board::DiskSnapshot;

/// The body of the x86 board's state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    /// [`MACHINE_STATE_VERSION`] when written.
    pub version: u32,
    pub machine: MachineSummary,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialState,
    /// Host input received and not yet in the serial port's FIFO (typed
    /// while the machine was paused, or beyond the FIFO's 64 bytes); it
    /// follows the FIFO's bytes once the restored machine runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_input: Vec<u8>,
    /// The i8042's registers and output queue (a state file written
    /// before the board had them restores a freshly reset controller).
    #[serde(default)]
    pub i8042: crate::i8042::I8042,
    /// One per virtio slot, in slot order.
    pub virtio: Vec<virtio::persist::TransportState>,
    /// Internal snapshots of the read-write qcow2 disks.
    pub disks: Vec<DiskSnapshot>,
    /// What the snapshot's taker recorded about the machine for its
    /// restorer (the control API's VM configuration); not read here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_json::Value>,
}

/// Reads a state file, refusing another board's (a riscv64 snapshot)
/// with a message that says so, before its body is parsed as this
/// board's.
pub fn read(path: &std::path::Path) -> Result<MachineState> {
    let v: serde_json::Value = vmm::snapshot::read_state(path)?;
    let board = v
        .get("machine")
        .and_then(|m| m.get("board"))
        .and_then(|b| b.as_str());
    match board {
        Some(BOARD_NAME) => {}
        Some(other) => {
            return Err(Error::SnapshotMismatch(format!(
                "{} is a snapshot of a {other} machine, not of the {BOARD_NAME} board",
                path.display()
            )))
        }
        None => {
            return Err(Error::SnapshotState(format!(
                "{} names no board",
                path.display()
            )))
        }
    }
    let st: MachineState = serde_json::from_value(v).map_err(|e| {
        Error::SnapshotState(format!("{}: the state does not parse: {e}", path.display()))
    })?;
    if st.version != MACHINE_STATE_VERSION {
        return Err(Error::SnapshotState(format!(
            "machine state version {} (this build reads version {MACHINE_STATE_VERSION})",
            st.version
        )));
    }
    if st.vcpus.len() != st.machine.vcpus || st.virtio.len() != st.machine.devices.len() {
        return Err(Error::SnapshotState(format!(
            "{} vCPU states for {} vCPUs, {} virtio states for {} devices",
            st.vcpus.len(),
            st.machine.vcpus,
            st.virtio.len(),
            st.machine.devices.len()
        )));
    }
    Ok(st)
}

/// The board named by the state file `path` ("x86_64-kvm",
/// "riscv64-virt", ...), so that a caller can hand it to the right board.
pub fn board_of(path: &std::path::Path) -> Result<String> {
    let v: serde_json::Value = vmm::snapshot::read_state(path)?;
    v.get("machine")
        .and_then(|m| m.get("board"))
        .and_then(|b| b.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::SnapshotState(format!("{} names no board", path.display())))
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// The MTRRs, which KVM_GET_MSR_INDEX_LIST leaves out (Firecracker
/// saves them too): the default type, the fixed-range ones and eight
/// variable-range base/mask pairs.
const MTRR_MSRS: [u32; 28] = [
    0x2ff, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x200,
    0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d,
    0x20e, 0x20f,
];

/// The MSRs worth saving: KVM's list of MSRs to save and the MTRRs,
/// sorted so that the TSC (0x10) is set back before the MSRs relative to
/// it (the TSC deadline, TSC_ADJUST). Those a vCPU cannot read are left
/// out when it is saved.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v = list.as_slice().to_vec();
    v.extend_from_slice(&MTRR_MSRS);
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Reads a vCPU's state; it must be out of KVM_RUN with no I/O pending
/// (the vCPU thread calls this after an immediate-exit KVM_RUN).
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
    let mut msrs = Vec::with_capacity(msr_indices.len());
    // One at a time: KVM_GET_MSRS stops at the first MSR it cannot read,
    // and some listed MSRs depend on CPUID features this vCPU lacks.
    for &index in msr_indices {
        let mut m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| Error::Setup(format!("MSR list: {e:?}")))?;
        if vcpu.get_msrs(&mut m).map_err(kvm_err("KVM_GET_MSRS"))? == 1 {
            msrs.push((index, m.as_slice()[0].data));
        }
    }
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().iter().map(to_blob).collect(),
        regs: to_blob(&vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?),
        sregs: to_blob(&vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?),
        xsave: to_blob(&vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?),
        xcrs: to_blob(&vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?),
        debugregs: to_blob(
            &vcpu
                .get_debug_regs()
                .map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
        ),
        lapic: to_blob(&vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?),
        mp_state: to_blob(&vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?),
        events: to_blob(
            &vcpu
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
        ),
        msrs,
    })
}

/// The CPUID a vCPU state was saved with, for KVM_SET_CPUID2.
pub fn saved_cpuid(st: &VcpuState) -> Result<CpuId> {
    if st.cpuid.is_empty() || st.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(Error::SnapshotState(format!(
            "{} CPUID entries (1 to {KVM_MAX_CPUID_ENTRIES} expected)",
            st.cpuid.len()
        )));
    }
    let entries = st
        .cpuid
        .iter()
        .map(|b| from_blob::<kvm_cpuid_entry2>("a CPUID entry", b))
        .collect::<Result<Vec<_>>>()?;
    CpuId::from_entries(&entries).map_err(|e| Error::SnapshotState(format!("CPUID: {e:?}")))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The saved MSRs to set back, a zero TSC deadline replaced by the saved
/// TSC (as Firecracker does). KVM zeroes the deadline when the timer
/// fires and injects the interrupt at the vCPU's next entry; a vCPU saved
/// in between (parked by an immediate-exit KVM_RUN, which enters nothing)
/// can lose that interrupt (the LAPIC state holds no pending expiry), and a guest in TSC-deadline mode waiting for
/// it (an idle Linux) would wait forever. A deadline at the saved TSC
/// fires at once after the restore: at worst a spurious tick, which Linux
/// ignores. KVM ignores the deadline unless the restored LAPIC's timer is
/// in TSC-deadline mode.
fn rearm_tsc_deadline(msrs: &[(u32, u64)]) -> Vec<(u32, u64)> {
    let tsc = msrs.iter().find(|m| m.0 == MSR_IA32_TSC).map(|m| m.1);
    msrs.iter()
        .map(|&(index, data)| match (index, data, tsc) {
            (MSR_IA32_TSC_DEADLINE, 0, Some(tsc)) => (index, tsc.max(1)),
            _ => (index, data),
        })
        .collect()
}

/// Writes a saved state into a fresh vCPU whose CPUID is already set (in
/// Firecracker's order: the MSRs after the LAPIC, the events last).
pub fn restore_vcpu(vcpu: &VcpuFd, st: &VcpuState) -> Result<()> {
    let mp: kvm_mp_state = from_blob("mp_state", &st.mp_state)?;
    vcpu.set_mp_state(mp).map_err(kvm_err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&from_blob("regs", &st.regs)?)
        .map_err(kvm_err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&from_blob("sregs", &st.sregs)?)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    let xsave: kvm_xsave = from_blob("xsave", &st.xsave)?;
    // SAFETY: `xsave` is a whole kvm_xsave (4 KiB, the legacy layout
    // KVM_GET_XSAVE wrote), so KVM reads no more than the struct holds.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&from_blob("xcrs", &st.xcrs)?)
        .map_err(kvm_err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&from_blob("debugregs", &st.debugregs)?)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&from_blob("lapic", &st.lapic)?)
        .map_err(kvm_err("KVM_SET_LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = rearm_tsc_deadline(&st.msrs)
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    if !entries.is_empty() {
        let msrs =
            Msrs::from_entries(&entries).map_err(|e| Error::Setup(format!("MSR list: {e:?}")))?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(Error::Setup(format!(
                "KVM refused to restore MSR {:#x} (set {set} of {})",
                entries[set].index,
                entries.len()
            )));
        }
    }
    vcpu.set_vcpu_events(&from_blob("events", &st.events)?)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<Blob> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(to_blob(&c))
}

/// Reads the in-kernel PICs, IOAPIC, PIT and clock of a paused VM.
pub fn save_vm(vm: &VmFd) -> Result<VmState> {
    let mut clock = vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
    // Only the clock value is restored; the flags describe this host's
    // clock source at the time.
    clock.flags = 0;
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: to_blob(&vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?),
        clock: to_blob(&clock),
    })
}

/// Writes a saved [`VmState`] into a fresh VM with its irqchip and PIT.
pub fn restore_vm(vm: &VmFd, st: &VmState) -> Result<()> {
    for (what, blob, id) in [
        ("pic_master", &st.pic_master, KVM_IRQCHIP_PIC_MASTER),
        ("pic_slave", &st.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        ("ioapic", &st.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        let c: kvm_irqchip = from_blob(what, blob)?;
        if c.chip_id != id {
            return Err(Error::SnapshotState(format!(
                "{what} holds the state of irqchip {}",
                c.chip_id
            )));
        }
        vm.set_irqchip(&c).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&from_blob("pit", &st.pit)?)
        .map_err(kvm_err("KVM_SET_PIT2"))?;
    let mut clock: kvm_clock_data = from_blob("clock", &st.clock)?;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tsc_deadline_is_rearmed_at_the_saved_tsc() {
        let saved = [(0x10, 5000), (0x3b, 7), (0x6e0, 0)];
        assert_eq!(
            rearm_tsc_deadline(&saved),
            [(0x10, 5000), (0x3b, 7), (0x6e0, 5000)]
        );
        // An armed deadline, or no TSC saved, is left alone.
        let armed = [(0x10, 5000), (0x6e0, 9000)];
        assert_eq!(rearm_tsc_deadline(&armed), armed);
        assert_eq!(rearm_tsc_deadline(&[(0x6e0, 0)]), [(0x6e0, 0)]);
    }

    #[test]
    fn blobs_round_trip_and_are_checked() {
        let r = kvm_regs {
            rip: 0x1234_5678,
            rax: u64::MAX,
            ..Default::default()
        };
        let b = to_blob(&r);
        let json = serde_json::to_string(&b).unwrap();
        let back: Blob = serde_json::from_str(&json).unwrap();
        let r2: kvm_regs = from_blob("regs", &back).unwrap();
        assert_eq!((r2.rip, r2.rax), (0x1234_5678, u64::MAX));
        let short = Blob(b.0[..10].to_vec());
        let e = from_blob::<kvm_regs>("regs", &short).unwrap_err();
        assert!(e.to_string().contains("regs has 10 bytes"), "{e}");
        assert!(serde_json::from_str::<Blob>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Blob>("\"zz\"").is_err());
    }
}
