//! The PLIC (platform-level interrupt controller), SiFive layout as on
//! QEMU's `virt` board: two contexts per hart (context 2h is hart h's
//! M-mode, 2h + 1 its S-mode), level-triggered sources.
//!
//! PLIC registers are touched only when interrupts happen, never on the
//! CPU's hot path, so one mutex guards the whole state.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::irq::HartIrqs;
use crate::layout::PLIC_SOURCES;
use crate::mmio::MmioDevice;
use riscv::irq::{MEIP, SEIP};
use vmm::IrqLine;

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
/// Priorities are 3 bits wide here (0..=7), as on QEMU's board.
const PRIORITY_MASK: u32 = 7;
const WORDS: usize = PLIC_SOURCES.div_ceil(32) as usize;

struct State {
    priority: Vec<u32>,
    /// Current level of each source's input line.
    level: [u32; WORDS],
    pending: [u32; WORDS],
    /// Claimed and not yet completed: masked until completion.
    claimed: [u32; WORDS],
    enable: Vec<[u32; WORDS]>,
    threshold: Vec<u32>,
    /// Last output level per context, to notify harts only on changes.
    output: Vec<bool>,
}

/// The PLIC device.
pub struct Plic {
    contexts: usize,
    state: Mutex<State>,
    irqs: Arc<dyn HartIrqs>,
}

fn bit(src: u32) -> (usize, u32) {
    ((src / 32) as usize, 1 << (src % 32))
}

impl Plic {
    pub fn new(harts: usize, irqs: Arc<dyn HartIrqs>) -> Self {
        let contexts = 2 * harts;
        Plic {
            contexts,
            state: Mutex::new(State {
                priority: vec![0; PLIC_SOURCES as usize],
                level: [0; WORDS],
                pending: [0; WORDS],
                claimed: [0; WORDS],
                enable: vec![[0; WORDS]; contexts],
                threshold: vec![0; contexts],
                output: vec![false; contexts],
            }),
            irqs,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the input level of source `src` (1..96).
    pub fn set_level(&self, src: u32, level: bool) {
        if src == 0 || src >= PLIC_SOURCES {
            return;
        }
        let mut s = self.lock();
        let (w, b) = bit(src);
        if level {
            s.level[w] |= b;
            if s.claimed[w] & b == 0 {
                s.pending[w] |= b;
            }
        } else {
            s.level[w] &= !b;
            s.pending[w] &= !b;
        }
        self.update(&mut s);
    }

    /// A line object for source `src`, to hand to a device model.
    pub fn line(self: &Arc<Self>, src: u32) -> PlicLine {
        PlicLine {
            plic: self.clone(),
            src,
        }
    }

    /// Highest-priority pending, enabled source above the context's
    /// threshold (lowest id wins ties), or 0.
    fn best(s: &State, ctx: usize) -> u32 {
        let mut best = 0;
        let mut best_prio = s.threshold[ctx];
        for w in 0..WORDS {
            let mut bits = s.pending[w] & s.enable[ctx][w] & !s.claimed[w];
            while bits != 0 {
                let src = w as u32 * 32 + bits.trailing_zeros();
                bits &= bits - 1;
                let p = s.priority[src as usize];
                if p > best_prio {
                    best_prio = p;
                    best = src;
                }
            }
        }
        best
    }

    fn update(&self, s: &mut State) {
        for ctx in 0..self.contexts {
            let out = Self::best(s, ctx) != 0;
            if out != s.output[ctx] {
                s.output[ctx] = out;
                let mask = if ctx % 2 == 0 { MEIP } else { SEIP };
                self.irqs.set_mip(ctx / 2, mask, out);
            }
        }
    }

    fn claim(&self, ctx: usize) -> u32 {
        let mut s = self.lock();
        let src = Self::best(&s, ctx);
        if src != 0 {
            let (w, b) = bit(src);
            s.pending[w] &= !b;
            s.claimed[w] |= b;
        }
        self.update(&mut s);
        src
    }

    fn complete(&self, ctx: usize, src: u32) {
        if src == 0 || src >= PLIC_SOURCES {
            return;
        }
        let mut s = self.lock();
        let (w, b) = bit(src);
        // Completion for a source the context cannot see is ignored, as the
        // specification says.
        if s.enable[ctx][w] & b == 0 {
            return;
        }
        s.claimed[w] &= !b;
        if s.level[w] & b != 0 {
            s.pending[w] |= b;
        }
        self.update(&mut s);
    }
}

impl MmioDevice for Plic {
    fn read(&self, offset: u64, size: u8) -> u64 {
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        let ctxs = self.contexts as u64;
        match offset {
            o if o < PENDING_BASE => {
                let src = ((o - PRIORITY_BASE) / 4) as usize;
                self.lock().priority.get(src).copied().unwrap_or(0) as u64
            }
            o if o < ENABLE_BASE => {
                let w = ((o - PENDING_BASE) / 4) as usize;
                self.lock().pending.get(w).copied().unwrap_or(0) as u64
            }
            o if o < ENABLE_BASE + ENABLE_STRIDE * ctxs => {
                let ctx = ((o - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = (((o - ENABLE_BASE) % ENABLE_STRIDE) / 4) as usize;
                self.lock().enable[ctx].get(w).copied().unwrap_or(0) as u64
            }
            o if (CONTEXT_BASE..CONTEXT_BASE + CONTEXT_STRIDE * ctxs).contains(&o) => {
                let ctx = ((o - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 => self.lock().threshold[ctx] as u64,
                    4 => self.claim(ctx) as u64,
                    _ => 0,
                }
            }
            _ => 0,
        }
    }

    fn write(&self, offset: u64, size: u8, value: u64) {
        if size != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = value as u32;
        let ctxs = self.contexts as u64;
        match offset {
            o if o < PENDING_BASE => {
                let src = ((o - PRIORITY_BASE) / 4) as usize;
                let mut s = self.lock();
                if src != 0 && src < s.priority.len() {
                    s.priority[src] = value & PRIORITY_MASK;
                    self.update(&mut s);
                }
            }
            // The pending bits are read-only.
            o if o < ENABLE_BASE => {}
            o if o < ENABLE_BASE + ENABLE_STRIDE * ctxs => {
                let ctx = ((o - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = (((o - ENABLE_BASE) % ENABLE_STRIDE) / 4) as usize;
                let mut s = self.lock();
                if w < WORDS {
                    // Source 0 does not exist.
                    s.enable[ctx][w] = if w == 0 { value & !1 } else { value };
                    self.update(&mut s);
                }
            }
            o if (CONTEXT_BASE..CONTEXT_BASE + CONTEXT_STRIDE * ctxs).contains(&o) => {
                let ctx = ((o - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 => {
                        let mut s = self.lock();
                        s.threshold[ctx] = value & PRIORITY_MASK;
                        self.update(&mut s);
                    }
                    4 => self.complete(ctx, value),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// One PLIC input, handed to a device model as its interrupt line.
#[derive(Clone)]
pub struct PlicLine {
    plic: Arc<Plic>,
    src: u32,
}

impl IrqLine for PlicLine {
    fn set_level(&self, level: bool) {
        self.plic.set_level(self.src, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Mutex<Vec<u64>>);
    impl HartIrqs for Rec {
        fn set_mip(&self, hart: usize, mask: u64, level: bool) {
            let mut m = self.0.lock().unwrap();
            if level {
                m[hart] |= mask
            } else {
                m[hart] &= !mask
            }
        }
    }

    fn setup() -> (Arc<Rec>, Arc<Plic>) {
        let rec = Arc::new(Rec(Mutex::new(vec![0; 2])));
        (rec.clone(), Arc::new(Plic::new(2, rec)))
    }
    const H1_S_THRESHOLD: u64 = CONTEXT_BASE + 3 * CONTEXT_STRIDE;
    const H1_S_CLAIM: u64 = H1_S_THRESHOLD + 4;
    const H1_S_ENABLE: u64 = ENABLE_BASE + 3 * ENABLE_STRIDE;

    #[test]
    fn claim_complete_cycle_of_a_level_source() {
        let (rec, plic) = setup();
        let line = plic.line(10);
        plic.write(10 * 4, 4, 1); // priority 1
        plic.write(H1_S_ENABLE, 4, 1 << 10);
        line.set_level(true);
        assert_eq!(rec.0.lock().unwrap()[1], SEIP);
        assert_eq!(rec.0.lock().unwrap()[0], 0, "hart 0 did not enable it");
        assert_eq!(plic.read(PENDING_BASE, 4), 1 << 10);
        assert_eq!(plic.read(H1_S_CLAIM, 4), 10);
        assert_eq!(rec.0.lock().unwrap()[1], 0, "claimed: no longer pending");
        assert_eq!(plic.read(H1_S_CLAIM, 4), 0, "nothing else to claim");
        // Still high at completion: pending again.
        plic.write(H1_S_CLAIM, 4, 10);
        assert_eq!(rec.0.lock().unwrap()[1], SEIP);
        assert_eq!(plic.read(H1_S_CLAIM, 4), 10);
        line.set_level(false);
        plic.write(H1_S_CLAIM, 4, 10);
        assert_eq!(rec.0.lock().unwrap()[1], 0);
    }

    #[test]
    fn priorities_thresholds_and_contexts() {
        let (rec, plic) = setup();
        plic.write(4 * 3, 4, 2);
        plic.write(4 * 5, 4, 5);
        plic.write(H1_S_ENABLE, 4, (1 << 3) | (1 << 5));
        // M context of hart 0 too.
        plic.write(ENABLE_BASE, 4, 1 << 3);
        plic.set_level(3, true);
        plic.set_level(5, true);
        assert_eq!(rec.0.lock().unwrap()[0], MEIP);
        assert_eq!(rec.0.lock().unwrap()[1], SEIP);
        plic.write(H1_S_THRESHOLD, 4, 5);
        assert_eq!(rec.0.lock().unwrap()[1], 0, "threshold masks both");
        plic.write(H1_S_THRESHOLD, 4, 2);
        assert_eq!(rec.0.lock().unwrap()[1], SEIP);
        assert_eq!(plic.read(H1_S_CLAIM, 4), 5, "highest priority first");
        assert_eq!(plic.read(H1_S_CLAIM, 4), 0, "3 is at the threshold");
        plic.write(H1_S_THRESHOLD, 4, 0);
        assert_eq!(plic.read(H1_S_CLAIM, 4), 3);
        // Priority 0 never interrupts.
        plic.write(4 * 3, 4, 0);
        plic.write(H1_S_CLAIM, 4, 3);
        assert_eq!(plic.read(H1_S_CLAIM, 4), 0);
        assert_eq!(plic.read(4 * 5, 4), 5);
        assert_eq!(plic.read(H1_S_ENABLE, 4), (1 << 3) | (1 << 5));
    }

    #[test]
    fn out_of_range_accesses_are_ignored() {
        let (_rec, plic) = setup();
        plic.write(CONTEXT_BASE + 10 * CONTEXT_STRIDE, 4, 1);
        assert_eq!(plic.read(CONTEXT_BASE + 10 * CONTEXT_STRIDE + 4, 4), 0);
        plic.set_level(200, true);
        plic.write(H1_S_CLAIM, 4, 999);
        plic.write(1, 1, 0xff);
    }
}

// ---- persist: the PLIC's state for snapshots ----

/// The PLIC's registers and line state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlicState {
    pub priority: Vec<u32>,
    pub level: Vec<u32>,
    pub pending: Vec<u32>,
    pub claimed: Vec<u32>,
    /// Per context (2 per hart), the enable words.
    pub enable: Vec<Vec<u32>>,
    pub threshold: Vec<u32>,
}

impl Plic {
    /// The PLIC's state.
    pub fn save(&self) -> PlicState {
        let s = self.lock();
        PlicState {
            priority: s.priority.clone(),
            level: s.level.to_vec(),
            pending: s.pending.to_vec(),
            claimed: s.claimed.to_vec(),
            enable: s.enable.iter().map(|e| e.to_vec()).collect(),
            threshold: s.threshold.clone(),
        }
    }

    /// Restores the registers (all checked first) and drives the harts'
    /// external interrupt lines to match.
    pub fn restore(&self, st: &PlicState) -> Result<(), crate::snapshot::DeviceStateError> {
        let bad = |what: String| crate::snapshot::DeviceStateError::new("plic", what);
        let words =
            |name: &str, v: &[u32]| -> Result<[u32; WORDS], crate::snapshot::DeviceStateError> {
                v.try_into()
                    .map_err(|_| bad(format!("{name} has {} words, expected {WORDS}", v.len())))
            };
        if st.priority.len() != PLIC_SOURCES as usize {
            return Err(bad(format!(
                "{} priorities, expected {PLIC_SOURCES}",
                st.priority.len()
            )));
        }
        if st.enable.len() != self.contexts || st.threshold.len() != self.contexts {
            return Err(bad(format!(
                "{} enable sets and {} thresholds for {} contexts",
                st.enable.len(),
                st.threshold.len(),
                self.contexts
            )));
        }
        let level = words("level", &st.level)?;
        let pending = words("pending", &st.pending)?;
        let claimed = words("claimed", &st.claimed)?;
        let enable = st
            .enable
            .iter()
            .map(|e| words("enable", e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut s = self.lock();
        s.priority = st.priority.iter().map(|p| p & PRIORITY_MASK).collect();
        s.level = level;
        s.pending = pending;
        s.claimed = claimed;
        s.enable = enable;
        s.threshold = st.threshold.iter().map(|t| t & PRIORITY_MASK).collect();
        // Outputs are recomputed from the state and every line driven to
        // its level (devices restored before the PLIC may have moved them).
        for ctx in 0..self.contexts {
            let out = Self::best(&s, ctx) != 0;
            s.output[ctx] = out;
            let mask = if ctx % 2 == 0 { MEIP } else { SEIP };
            self.irqs.set_mip(ctx / 2, mask, out);
        }
        Ok(())
    }
}
