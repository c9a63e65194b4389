//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT), as Firecracker writes them:
//! how a guest kernel without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`
//! (Debian's amd64 kernel among them) finds the virtio-mmio devices. The
//! DSDT lists each slot as an `LNRO0005` device (the ACPI id Linux's
//! virtio_mmio driver matches) with its register page and IOAPIC pin; the
//! MADT lists the LAPICs and the IOAPIC as the MP table does. The FADT
//! says "hardware-reduced ACPI": no SCI, no PM timer, no sleep registers
//! (reset stays the i8042's, `reboot=k`).
//!
//! The tables live in the BIOS area at [`ACPI_ADDR`] (RAM the e820 map
//! does not offer to the guest), where Linux scans for the RSDP.

use vmm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    COM1_IRQ, COM1_PORT, I8042_CMD_PORT, I8042_DATA_PORT, IOAPIC_ADDR, KBD_IRQ, LAPIC_ADDR,
    VIRTIO_MMIO_STRIDE,
};
use crate::{Error, Result};

/// RSDP, then the other tables: in the 0xe0000..0x100000 range Linux scans.
pub const ACPI_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use.
const ACPI_END: u64 = 0x10_0000;
const OEM_ID: &[u8; 6] = b"VIRTKT";
const OEM_TABLE_ID: &[u8; 8] = b"VIRTKIT ";

/// A virtio-mmio slot as the DSDT describes it.
#[derive(Debug, Clone, Copy)]
pub struct VirtioMmio {
    pub base: u64,
    pub gsi: u32,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table: header, `body`, checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"VKIT"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// An AML PkgLength for `content` bytes that follow it (the encoding
/// counts its own bytes too).
fn pkg_length(content: usize) -> Vec<u8> {
    if content + 1 < 0x40 {
        vec![(content + 1) as u8]
    } else {
        let n = content + 2;
        debug_assert!(n < 0x1000);
        vec![0x40 | (n & 0xf) as u8, (n >> 4) as u8]
    }
}

/// `Name(NAME, value)` with `value` already encoded.
fn aml_name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(name);
    v.extend_from_slice(value);
    v
}

/// One slot: `Device(Vnnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed
/// (the slot's page), Interrupt (edge, active high, the slot's pin) } }`.
fn aml_virtio_device(index: usize, dev: VirtioMmio) -> Vec<u8> {
    let mut crs = vec![0x86, 0x09, 0x00, 0x01]; // Memory32Fixed, read/write
    crs.extend_from_slice(&(dev.base as u32).to_le_bytes());
    crs.extend_from_slice(&(VIRTIO_MMIO_STRIDE as u32).to_le_bytes());
    // Extended interrupt: consumer, edge-triggered, active high, exclusive.
    crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    crs.extend_from_slice(&dev.gsi.to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]); // end tag (checksum 0: none)
    let name: [u8; 4] = format!("V{index:03}")
        .into_bytes()
        .try_into()
        .unwrap_or(*b"V???");
    aml_device(&name, b"LNRO0005", index as u8, &crs)
}

/// `Device(COM1) { _HID "PNP0501", _UID 0, _CRS { IO 0x3f8..0x3ff,
/// Interrupt (edge, active high, pin 4) } }`. With hardware-reduced ACPI
/// Linux has no legacy PIC and maps no ISA interrupt by itself: the
/// serial port's interrupt works only once ACPI describes it (as in
/// Firecracker's DSDT).
fn aml_serial() -> Vec<u8> {
    let port = COM1_PORT.to_le_bytes();
    // IO: 16-bit decode, min = max = 0x3f8, alignment 1, 8 ports.
    let mut crs = vec![0x47, 0x01, port[0], port[1], port[0], port[1], 0x01, 0x08];
    crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    crs.extend_from_slice(&COM1_IRQ.to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]);
    aml_device(b"COM1", b"PNP0501", 0, &crs)
}

/// `Device(PS2_) { _HID "PNP0303", _UID 0, _CRS { IO 0x60, IO 0x64,
/// Interrupt (edge, active high, pin 1) } }`: the i8042's keyboard port,
/// for the same reason as the serial port (without it Linux's i8042
/// driver finds the controller but no interrupt, and gives up with
/// EINVAL). No aux (mouse) device is listed: Linux then leaves the aux
/// port alone.
fn aml_i8042() -> Vec<u8> {
    let mut crs = Vec::new();
    for port in [I8042_DATA_PORT, I8042_CMD_PORT] {
        let p = port.to_le_bytes();
        crs.extend_from_slice(&[0x47, 0x01, p[0], p[1], p[0], p[1], 0x01, 0x01]);
    }
    crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    crs.extend_from_slice(&KBD_IRQ.to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]);
    aml_device(b"PS2_", b"PNP0303", 0, &crs)
}

/// `Device(NAME) { _HID hid, _UID uid, _CRS crs }`.
fn aml_device(name: &[u8; 4], hid: &[u8], uid: u8, crs: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0x0a, crs.len() as u8]; // BufferSize as a byte
    buffer.extend_from_slice(crs);
    let mut buf_op = vec![0x11];
    buf_op.extend_from_slice(&pkg_length(buffer.len()));
    buf_op.extend_from_slice(&buffer);
    let mut hid_str = vec![0x0d];
    hid_str.extend_from_slice(hid);
    hid_str.push(0);
    let mut body = name.to_vec();
    body.extend_from_slice(&aml_name(b"_HID", &hid_str));
    body.extend_from_slice(&aml_name(b"_UID", &[0x0a, uid]));
    body.extend_from_slice(&aml_name(b"_CRS", &buf_op));
    let mut dev = vec![0x5b, 0x82];
    dev.extend_from_slice(&pkg_length(body.len()));
    dev.extend_from_slice(&body);
    dev
}

/// The DSDT's AML: `Scope(\_SB) { the serial port, the i8042, the
/// virtio devices }`.
fn dsdt(virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut body = b"\\_SB_".to_vec();
    body.extend_from_slice(&aml_serial());
    body.extend_from_slice(&aml_i8042());
    for (i, d) in virtio.iter().enumerate() {
        body.extend_from_slice(&aml_virtio_device(i, *d));
    }
    let mut aml = vec![0x10];
    aml.extend_from_slice(&pkg_length(body.len()));
    aml.extend_from_slice(&body);
    sdt(b"DSDT", 2, &aml)
}

/// FADT revision 6 (276 bytes) pointing at the DSDT.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let at = |off: usize| off - 36;
    b[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    // IAPC_BOOT_ARCH: an 8042 (bit 1), no VGA (bit 2), no MSI (bit 3),
    // no CMOS RTC (bit 5).
    b[at(109)..at(111)].copy_from_slice(&(0x2u16 | 0x4 | 0x8 | 0x20).to_le_bytes());
    // Flags: HW_REDUCED_ACPI (bit 20), power and sleep buttons as
    // control-method devices (bits 4 and 5: there are none).
    b[at(112)..at(116)].copy_from_slice(&((1u32 << 20) | (1 << 4) | (1 << 5)).to_le_bytes());
    b[at(131)] = 5; // FADT minor version (ACPI 6.5)
    b[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    b[at(268)..at(276)].copy_from_slice(b"VIRTKIT ");
    sdt(b"FACP", 6, &b)
}

/// MADT: the LAPIC address, one enabled LAPIC per vCPU (APIC id = index),
/// the IOAPIC (GSIs from 0, id after the CPUs' as in the MP table) and
/// NMI on every LAPIC's LINT1.
fn madt(cpus: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: KVM has 8259s
    for id in 0..cpus as u8 {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, cpus as u8 + 1, 0]);
    b.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 6, &b)
}

/// All tables, laid out from [`ACPI_ADDR`].
pub fn build(cpus: usize, virtio: &[VirtioMmio]) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::Config(format!(
            "{cpus} vCPUs: the MADT describes 1 to 254 (8-bit APIC ids)"
        )));
    }
    let align = |n: usize| (n + 15) & !15;
    let xsdt_off = 64;
    let xsdt_len = 36 + 2 * 8;
    let fadt_off = align(xsdt_off + xsdt_len);
    let madt_off = align(fadt_off + 276);
    let madt_t = madt(cpus);
    let dsdt_off = align(madt_off + madt_t.len());
    let dsdt_t = dsdt(virtio);
    let addr = |off: usize| ACPI_ADDR + off as u64;
    let fadt_t = fadt(addr(dsdt_off));
    let mut x = Vec::new();
    x.extend_from_slice(&addr(fadt_off).to_le_bytes());
    x.extend_from_slice(&addr(madt_off).to_le_bytes());
    let xsdt_t = sdt(b"XSDT", 1, &x);

    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes, below
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2); // revision: ACPI 2.0+, XSDT
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&addr(xsdt_off).to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]); // extended checksum, reserved
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    let mut out = vec![0u8; dsdt_off + dsdt_t.len()];
    if ACPI_ADDR + out.len() as u64 > ACPI_END {
        return Err(Error::Config(format!(
            "the ACPI tables for {cpus} vCPUs and {} virtio devices do not fit below 1 MiB",
            virtio.len()
        )));
    }
    out[..36].copy_from_slice(&rsdp);
    out[xsdt_off..xsdt_off + xsdt_t.len()].copy_from_slice(&xsdt_t);
    out[fadt_off..fadt_off + fadt_t.len()].copy_from_slice(&fadt_t);
    out[madt_off..madt_off + madt_t.len()].copy_from_slice(&madt_t);
    out[dsdt_off..].copy_from_slice(&dsdt_t);
    Ok(out)
}

/// Writes the tables at [`ACPI_ADDR`].
pub fn write(mem: &GuestMemoryMmap, cpus: usize, virtio: &[VirtioMmio]) -> Result<()> {
    let t = build(cpus, virtio)?;
    mem.write_slice(&t, GuestAddress(ACPI_ADDR))
        .map_err(|e| Error::GuestMemory(format!("ACPI tables: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn table_at(t: &[u8], addr: u64) -> &[u8] {
        let off = (addr - ACPI_ADDR) as usize;
        let len = u32::from_le_bytes(t[off + 4..off + 8].try_into().unwrap()) as usize;
        &t[off..off + len]
    }

    #[test]
    fn tables_link_up_and_checksum() {
        let devs = [
            VirtioMmio {
                base: 0xd000_0000,
                gsi: 5,
            },
            VirtioMmio {
                base: 0xd000_1000,
                gsi: 6,
            },
        ];
        let t = build(4, &devs).unwrap();
        assert_eq!(&t[..8], b"RSD PTR ");
        assert_eq!(sum(&t[..20]), 0);
        assert_eq!(sum(&t[..36]), 0);
        let xsdt = table_at(&t, u64::from_le_bytes(t[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let fadt = table_at(&t, u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        assert_eq!((&fadt[..4], fadt.len(), sum(fadt)), (&b"FACP"[..], 276, 0));
        let madt = table_at(&t, u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        assert_eq!((&madt[..4], sum(madt)), (&b"APIC"[..], 0));
        // 4 LAPICs (8 bytes), the IOAPIC (12), the NMI (6).
        assert_eq!(madt.len(), 36 + 8 + 4 * 8 + 12 + 6);
        let dsdt = table_at(&t, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!((&dsdt[..4], sum(dsdt)), (&b"DSDT"[..], 0));
        let aml = &dsdt[36..];
        let count = aml.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(aml.windows(7).any(|w| w == b"PNP0501"));
        assert!(aml.windows(7).any(|w| w == b"PNP0303"));
        // The keyboard's pin 1, after the i8042's two ports.
        assert!(aml
            .windows(17)
            .any(|w| w[..8] == [0x47, 0x01, 0x64, 0, 0x64, 0, 1, 1] && w[13..] == [1, 0, 0, 0]));
        // The second device's register page and pin, in its _CRS.
        let base = 0xd000_1000u32.to_le_bytes();
        assert!(aml.windows(4).any(|w| w == base));
        assert!(aml.windows(5).any(|w| w == [0x01, 6, 0, 0, 0]));
        // Scope's PkgLength covers exactly the rest of the table.
        assert_eq!(aml[0], 0x10);
        let (len, _) = if aml[1] & 0xc0 == 0 {
            (aml[1] as usize, 1)
        } else {
            ((aml[1] & 0xf) as usize | (aml[2] as usize) << 4, 2)
        };
        assert_eq!(1 + len, aml.len());
    }

    #[test]
    fn many_devices_fit_and_bad_counts_are_refused() {
        let devs: Vec<_> = (0..19)
            .map(|i| VirtioMmio {
                base: 0xd000_0000 + i * 0x1000,
                gsi: 5 + i as u32,
            })
            .collect();
        assert!(build(254, &devs).is_ok());
        assert!(build(0, &devs).is_err());
        assert!(build(255, &devs).is_err());
    }
}
