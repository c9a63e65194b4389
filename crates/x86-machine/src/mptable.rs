//! The Intel MultiProcessor Specification 1.4 table: how an SMP guest
//! (Linux with `acpi=off` or without ACPI tables, as under Firecracker)
//! finds its CPUs, the IOAPIC and how the ISA interrupts are wired.

use vmm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};
use crate::{Error, Result};

/// The table must end below 640 KiB (0xa0000): this many vCPUs fit.
pub const MAX_MPTABLE_CPUS: usize = 32;
/// IOAPIC pins (KVM's IOAPIC has 24).
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and the FPU + APIC feature bits, as Firecracker.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer structure and the configuration table for
/// `cpus` processors (APIC ids 0..cpus, the first the bootstrap one).
pub fn build(cpus: usize) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_MPTABLE_CPUS {
        return Err(Error::Config(format!(
            "{cpus} vCPUs: the MP table describes 1 to {MAX_MPTABLE_CPUS}"
        )));
    }
    let ioapic_id = cpus as u8 + 1;
    // Configuration table entries.
    let mut entries = Vec::new();
    for id in 0..cpus as u8 {
        entries.push(0u8); // processor
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // ISA irq `pin` to IOAPIC pin `pin`, bus-default polarity/trigger.
        entries.extend_from_slice(&[3, MP_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // Local interrupts: ExtINT on every LAPIC's LINT0, NMI on LINT1.
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    let count = (cpus + 1 + 1 + IOAPIC_PINS as usize + 2) as u16;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VIRTKIT ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&((MPTABLE_ADDR + 16) as u32).to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, spec 1.4
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table at [`MPTABLE_ADDR`].
pub fn write(mem: &GuestMemoryMmap, cpus: usize) -> Result<()> {
    let t = build(cpus)?;
    debug_assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa_0000);
    mem.write_slice(&t, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| Error::GuestMemory(format!("MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_and_fits_below_640k() {
        let t = build(MAX_MPTABLE_CPUS).unwrap();
        assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa_0000);
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(len, t.len() - 16);
        assert_eq!(t[16..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert!(build(0).is_err());
        assert!(build(MAX_MPTABLE_CPUS + 1).is_err());
    }
}
