//! Blocks as the decoder builds them: up to [`MAX_BLOCK`] instructions of
//! one page, ending at the first instruction that ends a block or with a
//! `BlockEnd` sentinel; and the user-mode fetch that feeds the decoder.
//! Shared by the interpreter's block cache and the JIT.

use crate::cpu::{cause, Trap};
use crate::decode::{decode, decode_c, Insn, Kind, ZERO_SINK};
use crate::mem::{perm, UserSpace};
use crate::PAGE_SIZE;

/// Longest block, in instructions.
pub(crate) const MAX_BLOCK: usize = 96;
/// Blocks between timer polls in system mode (the run loop's and the
/// JIT's countdown).
pub(crate) const POLL_BLOCKS: u32 = 2048;

/// Decodes a block starting at `pc` using `fetch16(addr) -> Option<u16>`
/// for the bytes of the current page only; an instruction that would cross
/// the page end ends the block (returned `crosses` = true when that is the
/// very first instruction: the caller handles it specially).
pub(crate) fn decode_block(
    pc: u64,
    buf: &mut Vec<Insn>,
    mut fetch16: impl FnMut(u64) -> u16,
) -> bool {
    buf.clear();
    let page_end = (pc & !(PAGE_SIZE - 1)) + PAGE_SIZE;
    let mut a = pc;
    while buf.len() < MAX_BLOCK && a < page_end {
        let lo = fetch16(a);
        let insn = if lo & 3 == 3 {
            if a + 4 > page_end {
                if buf.is_empty() {
                    return true;
                }
                push_end(buf, a - pc);
                return false;
            }
            let hi = fetch16(a + 2);
            decode(lo as u32 | (hi as u32) << 16)
        } else {
            decode_c(lo)
        };
        let mut insn = insn;
        insn.off = (a - pc) as u16;
        a += insn.size() as u64;
        buf.push(insn);
        if insn.ends_block() {
            return false;
        }
    }
    push_end(buf, a - pc);
    false
}

/// Appends the fall-through sentinel at byte offset `off`.
pub(crate) fn push_end(buf: &mut Vec<Insn>, off: u64) {
    let mut end = decode(0);
    end.kind = Kind::BlockEnd;
    end.off = off as u16;
    buf.push(end);
}

#[cold]
#[inline(never)]
pub(crate) fn translate_user(space: &UserSpace, pc: u64, buf: &mut Vec<Insn>) -> Result<(), Trap> {
    let fetch_fault = |a: u64| Trap {
        cause: cause::FETCH_PAGE,
        tval: a,
    };
    if space.perms(pc) & perm::X == 0 {
        return Err(fetch_fault(pc));
    }
    // Mark before reading so a concurrent store cannot slip between.
    space.mark_code(pc / PAGE_SIZE);
    let page = pc & !(PAGE_SIZE - 1);
    // An execute-only page the host cannot read in place and that cannot
    // be copied either: the fetch faults, as it would on an unmapped page.
    let bytes = space.fetch_page(pc / PAGE_SIZE).ok_or(fetch_fault(pc))?;
    // `decode_block` never leaves the page of `pc`.
    let crosses = decode_block(pc, buf, |a| bytes.read_u16(a - page));
    if crosses {
        // A 32-bit instruction straddling two pages.
        let next = page + PAGE_SIZE;
        if space.perms(next) & perm::X == 0 {
            return Err(fetch_fault(next));
        }
        space.mark_code(next / PAGE_SIZE);
        let hi = space
            .fetch_page(next / PAGE_SIZE)
            .ok_or(fetch_fault(next))?;
        let w = bytes.read_u16(pc - page) as u32 | (hi.read_u16(0) as u32) << 16;
        buf.clear();
        let insn = decode(w);
        buf.push(insn);
        if !insn.ends_block() {
            push_end(buf, 4);
        }
    }
    Ok(())
}

/// Longest chain of blocks [`extend_user`] joins, in instructions.
pub(crate) const MAX_EXTENDED: usize = 192;

/// How far past an unconditional jump [`extend_user`] looks for a
/// target of the block's own jumps, in bytes.
const JUMP_REACH: u64 = 512;

/// JIT, user mode: while `buf` (the block at `pc`, as `translate_user`
/// built it) ends in a conditional branch whose fall-through stays in the
/// same page, appends the block that follows it, with offsets still
/// relative to `pc`. The translator then keeps going on the not-taken
/// path (one block entry, its checks and the register cache's reloads
/// fewer) and leaves only on the taken one. Instruction `k` of the chain
/// is still the `k`th executed from `pc` on the fall-through path, so
/// exits retire `k` instructions as before.
///
/// The same after an unconditional direct jump (`jal x0`) when some jump
/// of the block (this one included) targets the code that follows within
/// [`JUMP_REACH`] bytes: an if/else's join, a loop entered at its
/// condition, the rest of a loop whose body jumps back. That code is
/// reached only through jumps inside the block, which the translator
/// turns into jumps to merge points (each adjusting the retired count to
/// its target's index), so small loops and their bodies become one block
/// whose registers stay cached.
pub(crate) fn extend_user(space: &UserSpace, pc: u64, buf: &mut Vec<Insn>) {
    use Kind::*;
    let page = pc & !(PAGE_SIZE - 1);
    let Some(bytes) = space.fetch_page(pc / PAGE_SIZE) else {
        return;
    };
    let mut more = Vec::with_capacity(MAX_BLOCK + 1);
    while buf.len() < MAX_EXTENDED {
        let Some(last) = buf.last() else { return };
        let next = pc + last.off as u64 + last.size() as u64;
        let go_on = match last.kind {
            Beq | Bne | Blt | Bge | Bltu | Bgeu => true,
            Jal if last.rd == ZERO_SINK => buf.iter().any(|i| {
                matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal) && {
                    let t = (pc + i.off as u64).wrapping_add(i.imm as i64 as u64);
                    t >= next && t - next < JUMP_REACH
                }
            }),
            _ => false,
        };
        if !go_on || next >= page + PAGE_SIZE {
            return;
        }
        // `translate_user` checked the page executable and marked it as
        // holding code, so its bytes can be read as it reads them.
        // decode_block never leaves the page of `next`, which is `pc`'s.
        let crosses = decode_block(next, &mut more, |a| bytes.read_u16(a - page));
        if crosses {
            return;
        }
        let shift = (next - pc) as u16;
        buf.extend(more.drain(..).map(|mut i| {
            i.off += shift;
            i
        }));
    }
}
