//! Instruction decoding into a compact, engine-neutral form.
//!
//! [`Insn`] is what the block cache stores, the interpreter executes and
//! the JIT compiles. Compressed instructions decode to the
//! same kinds as their 32-bit expansions (with `len == 2`). Decoding never
//! panics: any word that is not a valid RV64GC+Zba/Zbb/Zbs instruction
//! becomes [`Kind::Illegal`].

/// Register number used as the destination when an instruction writes
/// `x0`: the interpreter keeps a scratch slot there so writes need no test.
pub const ZERO_SINK: u8 = 32;

macro_rules! kinds {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// Operation of a decoded instruction.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        #[allow(missing_docs)]
        pub enum Kind { $($(#[$m])* $name),* }
    };
}

kinds! {
    Illegal,
    /// Block-builder sentinel: falls through to `block start + off`.
    BlockEnd,
    // RV64I
    Lui, Auipc, Jal, Jalr, Beq, Bne, Blt, Bge, Bltu, Bgeu,
    Lb, Lh, Lw, Ld, Lbu, Lhu, Lwu, Sb, Sh, Sw, Sd,
    Addi, Slti, Sltiu, Xori, Ori, Andi, Slli, Srli, Srai,
    Add, Sub, Sll, Slt, Sltu, Xor, Srl, Sra, Or, And,
    Addiw, Slliw, Srliw, Sraiw, Addw, Subw, Sllw, Srlw, Sraw,
    Fence, FenceI, Ecall, Ebreak, Mret, Sret, Wfi, SfenceVma,
    Csrrw, Csrrs, Csrrc, Csrrwi, Csrrsi, Csrrci,
    // M
    Mul, Mulh, Mulhsu, Mulhu, Div, Divu, Rem, Remu, Mulw, Divw, Divuw, Remw, Remuw,
    // A
    LrW, ScW, AmoSwapW, AmoAddW, AmoXorW, AmoAndW, AmoOrW, AmoMinW, AmoMaxW, AmoMinuW, AmoMaxuW,
    LrD, ScD, AmoSwapD, AmoAddD, AmoXorD, AmoAndD, AmoOrD, AmoMinD, AmoMaxD, AmoMinuD, AmoMaxuD,
    // F
    Flw, Fsw, FmaddS, FmsubS, FnmsubS, FnmaddS, FaddS, FsubS, FmulS, FdivS, FsqrtS,
    FsgnjS, FsgnjnS, FsgnjxS, FminS, FmaxS, FcvtWS, FcvtWuS, FcvtLS, FcvtLuS, FmvXW,
    FeqS, FltS, FleS, FclassS, FcvtSW, FcvtSWu, FcvtSL, FcvtSLu, FmvWX,
    // D
    Fld, Fsd, FmaddD, FmsubD, FnmsubD, FnmaddD, FaddD, FsubD, FmulD, FdivD, FsqrtD,
    FsgnjD, FsgnjnD, FsgnjxD, FminD, FmaxD, FcvtWD, FcvtWuD, FcvtLD, FcvtLuD, FmvXD,
    FeqD, FltD, FleD, FclassD, FcvtDW, FcvtDWu, FcvtDL, FcvtDLu, FmvDX, FcvtSD, FcvtDS,
    // Zba
    AddUw, Sh1add, Sh2add, Sh3add, Sh1addUw, Sh2addUw, Sh3addUw, SlliUw,
    // Zbb
    Andn, Orn, Xnor, Clz, Clzw, Ctz, Ctzw, Cpop, Cpopw, Max, Maxu, Min, Minu,
    SextB, SextH, ZextH, Rol, Rolw, Ror, Rori, Roriw, Rorw, OrcB, Rev8,
    // Zbs
    Bclr, Bclri, Bext, Bexti, Binv, Binvi, Bset, Bseti,
}

/// One decoded instruction.
///
/// Integer destinations equal to `x0` are rewritten to [`ZERO_SINK`]. For
/// CSR instructions `imm` holds the CSR number and `rs1` the register or
/// the 5-bit immediate. `rm` is the rounding-mode field of FP instructions
/// (7 = dynamic). `raw` keeps the original encoding (the expanded 16 bits
/// for compressed instructions) for illegal-instruction reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Operation.
    pub kind: Kind,
    /// Destination register (integer or FP by kind).
    pub rd: u8,
    /// First source register.
    pub rs1: u8,
    /// Second source register.
    pub rs2: u8,
    /// Third source register (fused multiply-add).
    pub rs3: u8,
    /// Rounding mode field of FP instructions.
    pub rm: u8,
    /// Byte offset of this instruction from the start of its block (set
    /// by the block builder; 0 from the decoder).
    pub off: u16,
    /// Immediate (sign-extended where the encoding says so).
    pub imm: i32,
    /// The instruction bits as fetched.
    pub raw: u32,
}

impl Insn {
    fn new(kind: Kind, raw: u32, _len: u8) -> Self {
        Insn {
            kind,
            rd: 0,
            rs1: 0,
            rs2: 0,
            rs3: 0,
            rm: 0,
            off: 0,
            imm: 0,
            raw,
        }
    }

    /// Encoded length in bytes: 2 (compressed) or 4.
    #[inline(always)]
    pub fn size(&self) -> u8 {
        if self.raw & 3 == 3 {
            4
        } else {
            2
        }
    }

    /// True when this instruction ends a basic block: it changes control
    /// flow or machine state that the decoder or the block loop depend on.
    pub fn ends_block(&self) -> bool {
        use Kind::*;
        matches!(
            self.kind,
            Illegal
                | BlockEnd
                | Jal
                | Jalr
                | Beq
                | Bne
                | Blt
                | Bge
                | Bltu
                | Bgeu
                | FenceI
                | Ecall
                | Ebreak
                | Mret
                | Sret
                | Wfi
                | SfenceVma
                | Csrrw
                | Csrrs
                | Csrrc
                | Csrrwi
                | Csrrsi
                | Csrrci
        )
    }
}

/// Length in bytes of the instruction whose first 16 bits are `lo`.
/// RV64GC has only 16- and 32-bit instructions; longer encodings are
/// illegal and reported as 4 so the illegal word is fetched whole.
pub fn insn_len(lo: u16) -> u8 {
    if lo & 3 == 3 {
        4
    } else {
        2
    }
}

#[inline]
fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1u32 << (hi - lo + 1)) - 1)
}

fn int_rd(r: u32) -> u8 {
    if r == 0 {
        ZERO_SINK
    } else {
        r as u8
    }
}

fn r_type(kind: Kind, w: u32) -> Insn {
    let mut i = Insn::new(kind, w, 4);
    i.rd = int_rd(bits(w, 11, 7));
    i.rs1 = bits(w, 19, 15) as u8;
    i.rs2 = bits(w, 24, 20) as u8;
    i
}

fn i_type(kind: Kind, w: u32) -> Insn {
    let mut i = r_type(kind, w);
    i.rs2 = 0;
    i.imm = (w as i32) >> 20;
    i
}

fn illegal(raw: u32, len: u8) -> Insn {
    Insn::new(Kind::Illegal, raw, len)
}

/// Decodes a 32-bit instruction word.
pub fn decode(w: u32) -> Insn {
    use Kind::*;
    if w & 3 != 3 {
        return decode_c(w as u16);
    }
    let opcode = w & 0x7f;
    let f3 = bits(w, 14, 12);
    let f7 = bits(w, 31, 25);
    let rs2f = bits(w, 24, 20);
    match opcode {
        0x37 | 0x17 => {
            let mut i = Insn::new(if opcode == 0x37 { Lui } else { Auipc }, w, 4);
            i.rd = int_rd(bits(w, 11, 7));
            i.imm = (w & 0xffff_f000) as i32;
            i
        }
        0x6f => {
            let mut i = Insn::new(Jal, w, 4);
            i.rd = int_rd(bits(w, 11, 7));
            let imm = (bits(w, 31, 31) << 20)
                | (bits(w, 19, 12) << 12)
                | (bits(w, 20, 20) << 11)
                | (bits(w, 30, 21) << 1);
            i.imm = ((imm << 11) as i32) >> 11;
            i
        }
        0x67 if f3 == 0 => i_type(Jalr, w),
        0x63 => {
            let kind = match f3 {
                0 => Beq,
                1 => Bne,
                4 => Blt,
                5 => Bge,
                6 => Bltu,
                7 => Bgeu,
                _ => return illegal(w, 4),
            };
            let mut i = Insn::new(kind, w, 4);
            i.rs1 = bits(w, 19, 15) as u8;
            i.rs2 = rs2f as u8;
            let imm = (bits(w, 31, 31) << 12)
                | (bits(w, 7, 7) << 11)
                | (bits(w, 30, 25) << 5)
                | (bits(w, 11, 8) << 1);
            i.imm = ((imm << 19) as i32) >> 19;
            i
        }
        0x03 => {
            let kind = match f3 {
                0 => Lb,
                1 => Lh,
                2 => Lw,
                3 => Ld,
                4 => Lbu,
                5 => Lhu,
                6 => Lwu,
                _ => return illegal(w, 4),
            };
            i_type(kind, w)
        }
        0x07 => {
            let kind = match f3 {
                2 => Flw,
                3 => Fld,
                _ => return illegal(w, 4),
            };
            let mut i = i_type(kind, w);
            i.rd = bits(w, 11, 7) as u8;
            i
        }
        0x23 | 0x27 => {
            let kind = match (opcode, f3) {
                (0x23, 0) => Sb,
                (0x23, 1) => Sh,
                (0x23, 2) => Sw,
                (0x23, 3) => Sd,
                (0x27, 2) => Fsw,
                (0x27, 3) => Fsd,
                _ => return illegal(w, 4),
            };
            let mut i = Insn::new(kind, w, 4);
            i.rs1 = bits(w, 19, 15) as u8;
            i.rs2 = rs2f as u8;
            i.imm = (((w & 0xfe00_0000) as i32) >> 20) | bits(w, 11, 7) as i32;
            i
        }
        0x13 => {
            let imm12 = bits(w, 31, 20);
            let f6 = bits(w, 31, 26);
            let kind = match f3 {
                0 => Addi,
                2 => Slti,
                3 => Sltiu,
                4 => Xori,
                6 => Ori,
                7 => Andi,
                1 => match (f6, imm12) {
                    (0, _) => Slli,
                    (_, 0x600) => Clz,
                    (_, 0x601) => Ctz,
                    (_, 0x602) => Cpop,
                    (_, 0x604) => SextB,
                    (_, 0x605) => SextH,
                    (0x0a, _) => Bseti,
                    (0x12, _) => Bclri,
                    (0x1a, _) => Binvi,
                    _ => return illegal(w, 4),
                },
                _ => match (f6, imm12) {
                    (0, _) => Srli,
                    (0x10, _) => Srai,
                    (_, 0x287) => OrcB,
                    (_, 0x6b8) => Rev8,
                    (0x18, _) => Rori,
                    (0x12, _) => Bexti,
                    _ => return illegal(w, 4),
                },
            };
            let mut i = i_type(kind, w);
            if matches!(
                kind,
                Slli | Srli | Srai | Rori | Bseti | Bclri | Binvi | Bexti
            ) {
                i.imm = bits(w, 25, 20) as i32;
            }
            i
        }
        0x1b => {
            let kind = match (f3, f7) {
                (0, _) => Addiw,
                (1, 0) => Slliw,
                (1, 0x30) => match rs2f {
                    0 => Clzw,
                    1 => Ctzw,
                    2 => Cpopw,
                    _ => return illegal(w, 4),
                },
                (1, 4 | 5) => SlliUw,
                (5, 0) => Srliw,
                (5, 0x20) => Sraiw,
                (5, 0x30) => Roriw,
                _ => return illegal(w, 4),
            };
            let mut i = i_type(kind, w);
            match kind {
                Slliw | Srliw | Sraiw | Roriw => i.imm = rs2f as i32,
                SlliUw => i.imm = bits(w, 25, 20) as i32,
                _ => {}
            }
            i
        }
        0x33 => {
            let kind = match (f7, f3) {
                (0, 0) => Add,
                (0, 1) => Sll,
                (0, 2) => Slt,
                (0, 3) => Sltu,
                (0, 4) => Xor,
                (0, 5) => Srl,
                (0, 6) => Or,
                (0, 7) => And,
                (0x20, 0) => Sub,
                (0x20, 5) => Sra,
                (0x20, 4) => Xnor,
                (0x20, 6) => Orn,
                (0x20, 7) => Andn,
                (1, 0) => Mul,
                (1, 1) => Mulh,
                (1, 2) => Mulhsu,
                (1, 3) => Mulhu,
                (1, 4) => Div,
                (1, 5) => Divu,
                (1, 6) => Rem,
                (1, 7) => Remu,
                (0x10, 2) => Sh1add,
                (0x10, 4) => Sh2add,
                (0x10, 6) => Sh3add,
                (0x05, 4) => Min,
                (0x05, 5) => Minu,
                (0x05, 6) => Max,
                (0x05, 7) => Maxu,
                (0x30, 1) => Rol,
                (0x30, 5) => Ror,
                (0x24, 1) => Bclr,
                (0x24, 5) => Bext,
                (0x34, 1) => Binv,
                (0x14, 1) => Bset,
                _ => return illegal(w, 4),
            };
            r_type(kind, w)
        }
        0x3b => {
            let kind = match (f7, f3) {
                (0, 0) => Addw,
                (0, 1) => Sllw,
                (0, 5) => Srlw,
                (0x20, 0) => Subw,
                (0x20, 5) => Sraw,
                (1, 0) => Mulw,
                (1, 4) => Divw,
                (1, 5) => Divuw,
                (1, 6) => Remw,
                (1, 7) => Remuw,
                (4, 0) => AddUw,
                (4, 4) if rs2f == 0 => ZextH,
                (0x10, 2) => Sh1addUw,
                (0x10, 4) => Sh2addUw,
                (0x10, 6) => Sh3addUw,
                (0x30, 1) => Rolw,
                (0x30, 5) => Rorw,
                _ => return illegal(w, 4),
            };
            r_type(kind, w)
        }
        0x0f => match f3 {
            0 => Insn::new(Fence, w, 4),
            1 => Insn::new(FenceI, w, 4),
            _ => illegal(w, 4),
        },
        0x73 => decode_system(w),
        0x2f => decode_amo(w),
        0x43 | 0x47 | 0x4b | 0x4f => {
            let fmt = bits(w, 26, 25);
            let kind = match (opcode, fmt) {
                (0x43, 0) => FmaddS,
                (0x47, 0) => FmsubS,
                (0x4b, 0) => FnmsubS,
                (0x4f, 0) => FnmaddS,
                (0x43, 1) => FmaddD,
                (0x47, 1) => FmsubD,
                (0x4b, 1) => FnmsubD,
                (0x4f, 1) => FnmaddD,
                _ => return illegal(w, 4),
            };
            if f3 == 5 || f3 == 6 {
                return illegal(w, 4);
            }
            let mut i = Insn::new(kind, w, 4);
            i.rd = bits(w, 11, 7) as u8;
            i.rs1 = bits(w, 19, 15) as u8;
            i.rs2 = rs2f as u8;
            i.rs3 = bits(w, 31, 27) as u8;
            i.rm = f3 as u8;
            i
        }
        0x53 => decode_fp(w),
        _ => illegal(w, 4),
    }
}

fn decode_system(w: u32) -> Insn {
    use Kind::*;
    let f3 = bits(w, 14, 12);
    if f3 == 0 {
        let kind = match w {
            0x0000_0073 => Ecall,
            0x0010_0073 => Ebreak,
            0x3020_0073 => Mret,
            0x1020_0073 => Sret,
            0x1050_0073 => Wfi,
            _ if bits(w, 31, 25) == 0x09 && bits(w, 11, 7) == 0 => {
                let mut i = Insn::new(SfenceVma, w, 4);
                i.rs1 = bits(w, 19, 15) as u8;
                i.rs2 = bits(w, 24, 20) as u8;
                return i;
            }
            _ => return illegal(w, 4),
        };
        return Insn::new(kind, w, 4);
    }
    let kind = match f3 {
        1 => Csrrw,
        2 => Csrrs,
        3 => Csrrc,
        5 => Csrrwi,
        6 => Csrrsi,
        7 => Csrrci,
        _ => return illegal(w, 4),
    };
    let mut i = Insn::new(kind, w, 4);
    i.rd = int_rd(bits(w, 11, 7));
    i.rs1 = bits(w, 19, 15) as u8;
    i.imm = bits(w, 31, 20) as i32;
    i
}

fn decode_amo(w: u32) -> Insn {
    use Kind::*;
    let f3 = bits(w, 14, 12);
    let f5 = bits(w, 31, 27);
    let d = match f3 {
        2 => false,
        3 => true,
        _ => return illegal(w, 4),
    };
    let kind = match (f5, d) {
        (0b00010, false) if bits(w, 24, 20) == 0 => LrW,
        (0b00011, false) => ScW,
        (0b00001, false) => AmoSwapW,
        (0b00000, false) => AmoAddW,
        (0b00100, false) => AmoXorW,
        (0b01100, false) => AmoAndW,
        (0b01000, false) => AmoOrW,
        (0b10000, false) => AmoMinW,
        (0b10100, false) => AmoMaxW,
        (0b11000, false) => AmoMinuW,
        (0b11100, false) => AmoMaxuW,
        (0b00010, true) if bits(w, 24, 20) == 0 => LrD,
        (0b00011, true) => ScD,
        (0b00001, true) => AmoSwapD,
        (0b00000, true) => AmoAddD,
        (0b00100, true) => AmoXorD,
        (0b01100, true) => AmoAndD,
        (0b01000, true) => AmoOrD,
        (0b10000, true) => AmoMinD,
        (0b10100, true) => AmoMaxD,
        (0b11000, true) => AmoMinuD,
        (0b11100, true) => AmoMaxuD,
        _ => return illegal(w, 4),
    };
    r_type(kind, w)
}

fn decode_fp(w: u32) -> Insn {
    use Kind::*;
    let f5 = bits(w, 31, 27);
    let fmt = bits(w, 26, 25);
    let rm = bits(w, 14, 12);
    let rs2 = bits(w, 24, 20);
    let dbl = match fmt {
        0 => false,
        1 => true,
        _ => return illegal(w, 4),
    };
    let pick = |s: Kind, d: Kind| if dbl { d } else { s };
    // (kind, integer destination?, uses rounding mode?)
    let (kind, int_dest, rounds) = match f5 {
        0b00000 => (pick(FaddS, FaddD), false, true),
        0b00001 => (pick(FsubS, FsubD), false, true),
        0b00010 => (pick(FmulS, FmulD), false, true),
        0b00011 => (pick(FdivS, FdivD), false, true),
        0b01011 if rs2 == 0 => (pick(FsqrtS, FsqrtD), false, true),
        0b00100 => match rm {
            0 => (pick(FsgnjS, FsgnjD), false, false),
            1 => (pick(FsgnjnS, FsgnjnD), false, false),
            2 => (pick(FsgnjxS, FsgnjxD), false, false),
            _ => return illegal(w, 4),
        },
        0b00101 => match rm {
            0 => (pick(FminS, FminD), false, false),
            1 => (pick(FmaxS, FmaxD), false, false),
            _ => return illegal(w, 4),
        },
        0b01000 => match (dbl, rs2) {
            (false, 1) => (FcvtSD, false, true),
            (true, 0) => (FcvtDS, false, true),
            _ => return illegal(w, 4),
        },
        0b10100 => match rm {
            2 => (pick(FeqS, FeqD), true, false),
            1 => (pick(FltS, FltD), true, false),
            0 => (pick(FleS, FleD), true, false),
            _ => return illegal(w, 4),
        },
        0b11000 => match rs2 {
            0 => (pick(FcvtWS, FcvtWD), true, true),
            1 => (pick(FcvtWuS, FcvtWuD), true, true),
            2 => (pick(FcvtLS, FcvtLD), true, true),
            3 => (pick(FcvtLuS, FcvtLuD), true, true),
            _ => return illegal(w, 4),
        },
        0b11010 => match rs2 {
            0 => (pick(FcvtSW, FcvtDW), false, true),
            1 => (pick(FcvtSWu, FcvtDWu), false, true),
            2 => (pick(FcvtSL, FcvtDL), false, true),
            3 => (pick(FcvtSLu, FcvtDLu), false, true),
            _ => return illegal(w, 4),
        },
        0b11100 if rs2 == 0 => match rm {
            0 => (pick(FmvXW, FmvXD), true, false),
            1 => (pick(FclassS, FclassD), true, false),
            _ => return illegal(w, 4),
        },
        0b11110 if rs2 == 0 && rm == 0 => (pick(FmvWX, FmvDX), false, false),
        _ => return illegal(w, 4),
    };
    if rounds && (rm == 5 || rm == 6) {
        return illegal(w, 4);
    }
    let mut i = Insn::new(kind, w, 4);
    let rd = bits(w, 11, 7);
    i.rd = if int_dest { int_rd(rd) } else { rd as u8 };
    i.rs1 = bits(w, 19, 15) as u8;
    i.rs2 = rs2 as u8;
    i.rm = rm as u8;
    i
}

/// Decodes a 16-bit compressed instruction (RV64C).
pub fn decode_c(h: u16) -> Insn {
    use Kind::*;
    let w = h as u32;
    let raw = w;
    let op = w & 3;
    let f3 = bits(w, 15, 13);
    let rdp = (bits(w, 4, 2) + 8) as u8; // rd' / rs2'
    let rs1p = (bits(w, 9, 7) + 8) as u8; // rs1' / rd'
    let rd = bits(w, 11, 7) as u8;
    let rs2 = bits(w, 6, 2) as u8;
    let mk = |kind: Kind, rd: u8, rs1: u8, rs2: u8, imm: i32| Insn {
        kind,
        rd,
        rs1,
        rs2,
        rs3: 0,
        rm: 0,
        off: 0,
        imm,
        raw,
    };
    let ird = |r: u8| if r == 0 { ZERO_SINK } else { r };
    // 6-bit signed immediate imm[5]=bit12, imm[4:0]=bits 6:2
    let imm6 = (((bits(w, 12, 12) << 5 | bits(w, 6, 2)) << 26) as i32) >> 26;
    match (op, f3) {
        (0, 0) => {
            let imm = (bits(w, 12, 11) << 4)
                | (bits(w, 10, 7) << 6)
                | (bits(w, 6, 6) << 2)
                | (bits(w, 5, 5) << 3);
            if imm == 0 {
                return illegal(raw, 2);
            }
            mk(Addi, rdp, 2, 0, imm as i32)
        }
        (0, 1) | (0, 3) | (0, 5) | (0, 7) => {
            let imm = ((bits(w, 12, 10) << 3) | (bits(w, 6, 5) << 6)) as i32;
            match f3 {
                1 => mk(Fld, rdp, rs1p, 0, imm),
                3 => mk(Ld, rdp, rs1p, 0, imm),
                5 => mk(Fsd, 0, rs1p, rdp, imm),
                _ => mk(Sd, 0, rs1p, rdp, imm),
            }
        }
        (0, 2) | (0, 6) => {
            let imm = ((bits(w, 12, 10) << 3) | (bits(w, 6, 6) << 2) | (bits(w, 5, 5) << 6)) as i32;
            if f3 == 2 {
                mk(Lw, rdp, rs1p, 0, imm)
            } else {
                mk(Sw, 0, rs1p, rdp, imm)
            }
        }
        (1, 0) => mk(Addi, ird(rd), rd, 0, imm6),
        (1, 1) => {
            if rd == 0 {
                return illegal(raw, 2);
            }
            mk(Addiw, rd, rd, 0, imm6)
        }
        (1, 2) => mk(Addi, ird(rd), 0, 0, imm6),
        (1, 3) => {
            if rd == 2 {
                let imm = (bits(w, 12, 12) << 9)
                    | (bits(w, 6, 6) << 4)
                    | (bits(w, 5, 5) << 6)
                    | (bits(w, 4, 3) << 7)
                    | (bits(w, 2, 2) << 5);
                if imm == 0 {
                    return illegal(raw, 2);
                }
                mk(Addi, 2, 2, 0, ((imm << 22) as i32) >> 22)
            } else {
                if imm6 == 0 {
                    return illegal(raw, 2);
                }
                mk(Lui, ird(rd), 0, 0, imm6 << 12)
            }
        }
        (1, 4) => {
            let f2 = bits(w, 11, 10);
            let shamt = (bits(w, 12, 12) << 5 | bits(w, 6, 2)) as i32;
            match f2 {
                0 => mk(Srli, rs1p, rs1p, 0, shamt),
                1 => mk(Srai, rs1p, rs1p, 0, shamt),
                2 => mk(Andi, rs1p, rs1p, 0, imm6),
                _ => {
                    let kind = match (bits(w, 12, 12), bits(w, 6, 5)) {
                        (0, 0) => Sub,
                        (0, 1) => Xor,
                        (0, 2) => Or,
                        (0, 3) => And,
                        (1, 0) => Subw,
                        (1, 1) => Addw,
                        _ => return illegal(raw, 2),
                    };
                    mk(kind, rs1p, rs1p, rdp, 0)
                }
            }
        }
        (1, 5) => {
            let imm = (bits(w, 12, 12) << 11)
                | (bits(w, 11, 11) << 4)
                | (bits(w, 10, 9) << 8)
                | (bits(w, 8, 8) << 10)
                | (bits(w, 7, 7) << 6)
                | (bits(w, 6, 6) << 7)
                | (bits(w, 5, 3) << 1)
                | (bits(w, 2, 2) << 5);
            mk(Jal, ZERO_SINK, 0, 0, ((imm << 20) as i32) >> 20)
        }
        (1, 6) | (1, 7) => {
            let imm = (bits(w, 12, 12) << 8)
                | (bits(w, 11, 10) << 3)
                | (bits(w, 6, 5) << 6)
                | (bits(w, 4, 3) << 1)
                | (bits(w, 2, 2) << 5);
            let imm = ((imm << 23) as i32) >> 23;
            mk(if f3 == 6 { Beq } else { Bne }, 0, rs1p, 0, imm)
        }
        (2, 0) => {
            let shamt = (bits(w, 12, 12) << 5 | bits(w, 6, 2)) as i32;
            mk(Slli, ird(rd), rd, 0, shamt)
        }
        (2, 1) => {
            let imm = (bits(w, 12, 12) << 5) | (bits(w, 6, 5) << 3) | (bits(w, 4, 2) << 6);
            mk(Fld, rd, 2, 0, imm as i32)
        }
        (2, 2) => {
            if rd == 0 {
                return illegal(raw, 2);
            }
            let imm = (bits(w, 12, 12) << 5) | (bits(w, 6, 4) << 2) | (bits(w, 3, 2) << 6);
            mk(Lw, rd, 2, 0, imm as i32)
        }
        (2, 3) => {
            if rd == 0 {
                return illegal(raw, 2);
            }
            let imm = (bits(w, 12, 12) << 5) | (bits(w, 6, 5) << 3) | (bits(w, 4, 2) << 6);
            mk(Ld, rd, 2, 0, imm as i32)
        }
        (2, 4) => {
            let hi = bits(w, 12, 12);
            match (hi, rd, rs2) {
                (0, 0, 0) => illegal(raw, 2),
                (0, _, 0) => mk(Jalr, ZERO_SINK, rd, 0, 0),
                (0, _, _) => mk(Add, ird(rd), 0, rs2, 0),
                (1, 0, 0) => mk(Ebreak, 0, 0, 0, 0),
                (1, _, 0) => mk(Jalr, 1, rd, 0, 0),
                _ => mk(Add, ird(rd), rd, rs2, 0),
            }
        }
        (2, 5) | (2, 7) => {
            let imm = ((bits(w, 12, 10) << 3) | (bits(w, 9, 7) << 6)) as i32;
            mk(if f3 == 5 { Fsd } else { Sd }, 0, 2, rs2, imm)
        }
        (2, 6) => {
            let imm = ((bits(w, 12, 9) << 2) | (bits(w, 8, 7) << 6)) as i32;
            mk(Sw, 0, 2, rs2, imm)
        }
        _ => illegal(raw, 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_forms() {
        // addi a0, a1, -5
        let i = decode(0xffb5_8513);
        assert_eq!((i.kind, i.rd, i.rs1, i.imm), (Kind::Addi, 10, 11, -5));
        // jal ra, -8 : imm=-8
        let i = decode(0xff9f_f0ef);
        assert_eq!((i.kind, i.rd, i.imm), (Kind::Jal, 1, -8));
        // beq a0, a1, 16
        let i = decode(0x00b5_0863);
        assert_eq!((i.kind, i.rs1, i.rs2, i.imm), (Kind::Beq, 10, 11, 16));
        // sd ra, 8(sp)
        let i = decode(0x0011_3423);
        assert_eq!((i.kind, i.rs1, i.rs2, i.imm), (Kind::Sd, 2, 1, 8));
        // addi x0, x0, 0 (nop) writes the sink
        assert_eq!(decode(0x0000_0013).rd, ZERO_SINK);
        // lui a0, 0x80000 -> imm sign-extended
        let i = decode(0x8000_0537);
        assert_eq!((i.kind, i.imm), (Kind::Lui, i32::MIN));
        // csrrs a0, fflags, zero
        let i = decode(0x0010_2573);
        assert_eq!((i.kind, i.rd, i.imm), (Kind::Csrrs, 10, 1));
        // fmadd.d fa0, fa1, fa2, fa3, dyn
        let i = decode(0x6ac5_f543);
        assert_eq!(
            (i.kind, i.rd, i.rs1, i.rs2, i.rs3, i.rm),
            (Kind::FmaddD, 10, 11, 12, 13, 7)
        );
        // srai a0, a0, 63
        let i = decode(0x43f5_5513);
        assert_eq!((i.kind, i.imm), (Kind::Srai, 63));
        // rev8 a0, a0 ; orc.b ; clz ; sh1add
        assert_eq!(decode(0x6b85_5513).kind, Kind::Rev8);
        assert_eq!(decode(0x2875_5513).kind, Kind::OrcB);
        assert_eq!(decode(0x6005_1513).kind, Kind::Clz);
        assert_eq!(decode(0x20b5_2533).kind, Kind::Sh1add);
        // amoadd.w.aqrl a0, a1, (a2)
        assert_eq!(decode(0x06b6_252f).kind, Kind::AmoAddW);
        // reserved rounding mode 5
        assert_eq!(decode(0x02b5_5553).kind, Kind::Illegal);
        assert_eq!(decode(0xffff_ffff).kind, Kind::Illegal);
    }

    #[test]
    fn decodes_compressed() {
        // c.addi4spn a0, sp, 16 : 0x0808
        let i = decode_c(0x0808);
        assert_eq!(
            (i.kind, i.rd, i.rs1, i.imm, i.size()),
            (Kind::Addi, 10, 2, 16, 2)
        );
        // c.li a0, -1 : 0x557d
        let i = decode_c(0x557d);
        assert_eq!((i.kind, i.rd, i.rs1, i.imm), (Kind::Addi, 10, 0, -1));
        // c.ldsp ra, 8(sp): 0x60a2
        let i = decode_c(0x60a2);
        assert_eq!((i.kind, i.rd, i.rs1, i.imm), (Kind::Ld, 1, 2, 8));
        // c.sdsp ra, 8(sp): 0xe406
        let i = decode_c(0xe406);
        assert_eq!((i.kind, i.rs1, i.rs2, i.imm), (Kind::Sd, 2, 1, 8));
        // c.j -2: 0xbffd
        let i = decode_c(0xbffd);
        assert_eq!((i.kind, i.rd, i.imm), (Kind::Jal, ZERO_SINK, -2));
        // c.ret = c.jr ra: 0x8082
        let i = decode_c(0x8082);
        assert_eq!((i.kind, i.rd, i.rs1), (Kind::Jalr, ZERO_SINK, 1));
        // c.mv a0, a1: 0x852e
        let i = decode_c(0x852e);
        assert_eq!((i.kind, i.rd, i.rs1, i.rs2), (Kind::Add, 10, 0, 11));
        // c.addi16sp sp, -64: 0x7139
        let i = decode_c(0x7139);
        assert_eq!((i.kind, i.rd, i.imm), (Kind::Addi, 2, -64));
        // c.beqz a0, 8 : 0xc501
        let i = decode_c(0xc501);
        assert_eq!((i.kind, i.rs1, i.imm), (Kind::Beq, 10, 8));
        // c.ebreak
        assert_eq!(decode_c(0x9002).kind, Kind::Ebreak);
        // all-zero is illegal
        assert_eq!(decode_c(0).kind, Kind::Illegal);
        // c.lui a0, 0xfffff (-1<<12)
        let i = decode_c(0x757d);
        assert_eq!((i.kind, i.rd, i.imm), (Kind::Lui, 10, -4096));
    }
}

#[cfg(test)]
mod sweep {
    use super::*;

    /// A deterministic stand-in for the fuzzer (crates/riscv/fuzz): a few
    /// million pseudo-random words and every 16-bit word decode without
    /// panicking and with register fields in range.
    #[test]
    fn random_words_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = decode(x as u32);
            assert!(i.rd <= ZERO_SINK && i.rs1 < 32 && i.rs2 < 32 && i.rs3 < 32);
        }
        for h in 0..=u16::MAX {
            let i = decode_c(h);
            assert_eq!(i.size(), if h & 3 == 3 { 4 } else { 2 });
            assert!(i.rd <= ZERO_SINK && i.rs1 < 32 && i.rs2 < 32);
        }
    }
}
