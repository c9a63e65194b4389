//! The device tree of the `virt` board, generated for the configuration
//! (harts, RAM, ISA, virtio slots, bootargs, initrd), following the tree
//! QEMU writes for its own `virt` board so Linux and OpenSBI treat both
//! alike.

use crate::layout::*;

/// What the device tree describes.
#[derive(Clone, Debug)]
pub struct FdtConfig {
    pub harts: usize,
    pub ram_base: u64,
    pub ram_size: u64,
    /// Extensions after the base ISA, lower case, single letters first:
    /// e.g. `["i","m","a","f","d","c","zicsr","zifencei"]`.
    pub isa_extensions: Vec<String>,
    /// `"riscv,sv39"`, `"riscv,sv48"`... or `None` for no MMU.
    pub mmu_type: Option<String>,
    pub bootargs: String,
    /// Physical start and end (exclusive) of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// virtio-mmio slots to list (indices into the board's 8 slots).
    pub virtio_slots: Vec<usize>,
    pub rng_seed: Option<[u8; 32]>,
    /// List the VM generation ID device ("microsoft,vmgenid").
    pub vmgenid: bool,
}

impl FdtConfig {
    /// The `riscv,isa` string: `rv64` + single-letter extensions, then the
    /// multi-letter ones separated by `_`.
    pub fn isa_string(&self) -> String {
        let mut s = String::from("rv64");
        let (single, multi): (Vec<&String>, Vec<&String>) =
            self.isa_extensions.iter().partition(|e| e.len() == 1);
        for e in single {
            s.push_str(e);
        }
        for e in multi {
            s.push('_');
            s.push_str(e);
        }
        s
    }
}

/// Errors building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error("device tree: {0}")]
    Fdt(#[from] vm_fdt::Error),
}

const PHANDLE_PLIC: u32 = 1;
const PHANDLE_TEST: u32 = 2;
/// Hart h's cpu node has phandle `PHANDLE_CPU_BASE + 2h`, its interrupt
/// controller `PHANDLE_CPU_BASE + 2h + 1`.
const PHANDLE_CPU_BASE: u32 = 16;

/// Builds the flattened device tree blob.
pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut f = vm_fdt::FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "riscv-virtio,virtkit")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &cfg.bootargs)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART_BASE:x}"))?;
    if let Some((start, end)) = cfg.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    if let Some(seed) = cfg.rng_seed {
        f.property("rng-seed", &seed)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{:x}", cfg.ram_base))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[cfg.ram_base, cfg.ram_size])?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    let isa = cfg.isa_string();
    for h in 0..cfg.harts {
        let cpu = f.begin_node(&format!("cpu@{h:x}"))?;
        f.property_phandle(PHANDLE_CPU_BASE + 2 * h as u32)?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h as u32)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", &isa)?;
        f.property_string("riscv,isa-base", "rv64i")?;
        f.property_string_list("riscv,isa-extensions", cfg.isa_extensions.clone())?;
        if let Some(mmu) = &cfg.mmu_type {
            f.property_string("mmu-type", mmu)?;
        }
        let intc = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_phandle(PHANDLE_CPU_BASE + 2 * h as u32 + 1)?;
        f.end_node(intc)?;
        f.end_node(cpu)?;
    }
    let map = f.begin_node("cpu-map")?;
    let cluster = f.begin_node("cluster0")?;
    for h in 0..cfg.harts {
        let core = f.begin_node(&format!("core{h}"))?;
        f.property_u32("cpu", PHANDLE_CPU_BASE + 2 * h as u32)?;
        f.end_node(core)?;
    }
    f.end_node(cluster)?;
    f.end_node(map)?;
    f.end_node(cpus)?;

    for (name, value) in [("poweroff", 0x5555u32), ("reboot", 0x7777)] {
        let n = f.begin_node(name)?;
        f.property_u32("value", value)?;
        f.property_u32("offset", 0)?;
        f.property_u32("regmap", PHANDLE_TEST)?;
        f.property_string("compatible", &format!("syscon-{name}"))?;
        f.end_node(n)?;
    }

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let test = f.begin_node(&format!("test@{TEST_BASE:x}"))?;
    f.property_phandle(PHANDLE_TEST)?;
    f.property_array_u64("reg", &[TEST_BASE, TEST_SIZE])?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.end_node(test)?;

    let uart = f.begin_node(&format!("serial@{UART_BASE:x}"))?;
    f.property_u32("interrupts", UART_IRQ)?;
    f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    f.property_string("compatible", "ns16550a")?;
    f.end_node(uart)?;

    if cfg.vmgenid {
        let n = f.begin_node(&format!("vmgenid@{VMGENID_BASE:x}"))?;
        f.property_u32("interrupts", VMGENID_IRQ)?;
        f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
        f.property_array_u64("reg", &[VMGENID_BASE, VMGENID_SIZE])?;
        f.property_string("compatible", "microsoft,vmgenid")?;
        f.end_node(n)?;
    }

    // In slot order: Linux probes the nodes in tree order, so the device in
    // slot 0 (the first --disk) becomes virtio0 and /dev/vda.
    let mut slots = cfg.virtio_slots.clone();
    slots.sort_unstable();
    for &i in slots.iter() {
        let base = virtio_base(i);
        let n = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_u32("interrupts", VIRTIO_IRQ_BASE + i as u32)?;
        f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
        f.property_array_u64("reg", &[base, VIRTIO_STRIDE])?;
        f.property_string("compatible", "virtio,mmio")?;
        f.end_node(n)?;
    }

    let mut plic_ints = Vec::new();
    let mut clint_ints = Vec::new();
    for h in 0..cfg.harts as u32 {
        let intc = PHANDLE_CPU_BASE + 2 * h + 1;
        // M external (11), S external (9): contexts 2h and 2h + 1.
        plic_ints.extend_from_slice(&[intc, 11, intc, 9]);
        // M software (3), M timer (7).
        clint_ints.extend_from_slice(&[intc, 3, intc, 7]);
    }
    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_phandle(PHANDLE_PLIC)?;
    f.property_u32("riscv,ndev", PLIC_SOURCES - 1)?;
    f.property_array_u64("reg", &[PLIC_BASE, PLIC_SIZE])?;
    f.property_array_u32("interrupts-extended", &plic_ints)?;
    f.property_null("interrupt-controller")?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_u32("#address-cells", 0)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.end_node(plic)?;

    let clint = f.begin_node(&format!("clint@{CLINT_BASE:x}"))?;
    f.property_array_u32("interrupts-extended", &clint_ints)?;
    f.property_array_u64("reg", &[CLINT_BASE, CLINT_SIZE])?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.end_node(clint)?;

    f.end_node(soc)?;
    f.end_node(root)?;
    Ok(f.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> FdtConfig {
        FdtConfig {
            harts: 2,
            ram_base: RAM_BASE,
            ram_size: 256 << 20,
            isa_extensions: ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            mmu_type: Some("riscv,sv48".into()),
            bootargs: "console=ttyS0 panic=-1".into(),
            initrd: Some((0x8800_0000, 0x8810_0000)),
            virtio_slots: vec![0, 1],
            rng_seed: Some([7; 32]),
            vmgenid: true,
        }
    }

    #[test]
    fn isa_string_puts_single_letters_first() {
        assert_eq!(sample().isa_string(), "rv64imafdc_zicsr_zifencei");
    }

    #[test]
    fn blob_is_well_formed_and_names_the_devices() {
        let blob = build(&sample()).unwrap();
        // FDT magic, big endian.
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        let total = u32::from_be_bytes(blob[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, blob.len());
        let text = String::from_utf8_lossy(&blob);
        for needle in [
            "serial@10000000",
            "plic@c000000",
            "clint@2000000",
            "test@100000",
            "virtio_mmio@10001000",
            "virtio_mmio@10002000",
            "syscon-poweroff",
            "console=ttyS0 panic=-1",
            "rv64imafdc_zicsr_zifencei",
            "cpu@1",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(!text.contains("virtio_mmio@10003000"));
    }
}
