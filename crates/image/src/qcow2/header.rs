//! The qcow2 header (QEMU docs/interop/qcow2.rst): parsing with every field
//! checked, and serialisation that keeps unknown header extensions.

use crate::{CompressionType, Error, Format, Result};

pub(crate) const MAGIC: u32 = 0x5146_49fb;

/// Incompatible feature bits.
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature bits.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
/// QEMU keeps the backing format in a 16-byte string: longer ones are refused.
const MAX_BACKING_FORMAT: usize = 16;
/// Autoclear bit "raw external data": only valid with an external data file.
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Fixed header lengths.
const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: usize = 104;
/// Header length of images we create (v3 with the compression type byte,
/// padded to 8 bytes, as QEMU writes it).
pub(crate) const V3_HEADER_LEN: u32 = 112;

pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table accepted (QEMU's QCOW_MAX_L1_SIZE): 32 MiB.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (QEMU's QCOW_MAX_REFTABLE_SIZE): 8 MiB.
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots accepted (QEMU's QCOW_MAX_SNAPSHOTS).
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name (QEMU refuses more than 1023 bytes).
pub(crate) const MAX_BACKING_NAME: u32 = 1023;
/// Largest virtual size accepted: 2^61 bytes keeps every offset computation
/// far from u64 overflow; the L1 cap limits it further per cluster size.
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Offsets of header fields that are rewritten in place.
pub(crate) const OFF_SIZE: u64 = 24;
pub(crate) const OFF_L1_SIZE: u64 = 36;
pub(crate) const OFF_RT_OFFSET: u64 = 48;
pub(crate) const OFF_INCOMPAT: u64 = 72;
pub(crate) const OFF_AUTOCLEAR: u64 = 88;

/// Names of the features we know, for the feature name table and for error
/// messages about feature bits.
const FEATURE_NAMES: &[(u8, u8, &str)] = &[
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: CompressionType,
    /// Header bytes past the fields we know (up to header_length), kept as is.
    pub extra_fields: Vec<u8>,
    pub backing_file: Option<String>,
    pub backing_format: Option<Format>,
    /// The backing format string when it is not one we know (kept on rewrite).
    pub backing_format_raw: Option<String>,
    /// Feature name table entries found in the file: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// Header extensions we do not interpret: (type, data), rewritten as is.
    pub unknown_exts: Vec<(u32, Vec<u8>)>,
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Parses the header from the first bytes of the file (`buf` holds at
    /// most one cluster, fewer if the file is shorter). `file_len` bounds the
    /// table offsets.
    pub fn parse(path: &str, buf: &[u8], file_len: u64) -> Result<Header> {
        let corrupt = |what: String| Error::Corrupt {
            path: path.to_string(),
            what,
        };
        let not_qcow2 = |reason: &str| Error::NotFormat {
            path: path.to_string(),
            format: "qcow2",
            reason: reason.to_string(),
        };
        if buf.len() < 4 || be32(buf, 0) != MAGIC {
            return Err(not_qcow2("bad magic"));
        }
        if buf.len() < V2_HEADER_LEN {
            return Err(corrupt(format!(
                "header truncated: file has {} bytes, the header needs at least {V2_HEADER_LEN}",
                buf.len()
            )));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported {
                path: path.to_string(),
                feature: format!("qcow2 version {version}"),
            });
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cs = 1u64 << cluster_bits;
        // The caller passes the whole header cluster, or all of a shorter
        // file; bytes past the end of the file read as zeros (as in QEMU).
        if (buf.len() as u64) < cs.min(file_len) {
            return Err(corrupt(format!(
                "header cluster truncated: {} of {} bytes given",
                buf.len(),
                cs.min(file_len)
            )));
        }
        let mut hc = buf[..buf.len().min(cs as usize)].to_vec();
        // Room for an extension header straddling the end of the cluster.
        hc.resize(cs as usize + 8, 0);
        let buf = &hc[..];
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression: CompressionType::Zlib,
            extra_fields: Vec::new(),
            backing_file: None,
            backing_format: None,
            backing_format_raw: None,
            feature_names: Vec::new(),
            unknown_exts: Vec::new(),
        };
        // The checks below follow QEMU's qcow2_do_open, in its order, so
        // that the same headers are refused.
        if version == 3 {
            h.incompatible = be64(buf, 72);
            h.compatible = be64(buf, 80);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if (h.header_length as usize) < V3_MIN_HEADER_LEN {
                return Err(corrupt(format!(
                    "header_length {} too short (v3 needs at least {V3_MIN_HEADER_LEN})",
                    h.header_length
                )));
            }
        }
        let hl = h.header_length as usize;
        if hl as u64 > cs {
            return Err(corrupt(format!(
                "header_length {hl} exceeds the cluster size ({cs})"
            )));
        }
        if h.backing_file_offset > cs {
            return Err(corrupt(format!(
                "backing file name offset invalid: backing_file_offset {:#x} lies beyond the header cluster ({cs} bytes)",
                h.backing_file_offset
            )));
        }
        if version == 3 {
            // The compression type byte, when the header is long enough for
            // it; a type other than zlib needs the feature bit, zlib must
            // not have it.
            let ty = if hl > 104 { buf[104] } else { 0 };
            h.compression = match ty {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => {
                    return Err(Error::Unsupported {
                        path: path.to_string(),
                        feature: format!("compression type {t}"),
                    })
                }
            };
            let bit = h.incompatible & INCOMPAT_COMPRESSION != 0;
            if ty == 0 && bit {
                return Err(corrupt(
                    "compression type feature bit set, but the compression type is zlib".into(),
                ));
            }
            if ty != 0 && !bit {
                return Err(corrupt(
                    "compression type set without the compression type feature bit".into(),
                ));
            }
            if hl > 105 {
                h.extra_fields = buf[105..hl].to_vec();
            }
        }
        // Unknown incompatible features: refuse, naming them (from the
        // feature name table if the extensions parse).
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let _ = h.parse_extensions(path, buf, cs);
            let mut names = Vec::new();
            for bit in 0..64u8 {
                if unknown & (1 << bit) != 0 {
                    let name = h
                        .feature_names
                        .iter()
                        .find(|(t, b, _)| *t == 0 && *b == bit)
                        .map(|(_, _, n)| n.clone())
                        .unwrap_or_else(|| format!("unknown incompatible feature bit {bit}"));
                    names.push(name);
                }
            }
            return Err(Error::Unsupported {
                path: path.to_string(),
                feature: names.join(", "),
            });
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(corrupt(
                "extended L2 entries need a cluster size of at least 16 KiB".into(),
            ));
        }
        if h.refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {} > 6 (refcounts wider than 64 bits)",
                h.refcount_order
            )));
        }
        if h.crypt_method != 0 {
            return Err(Error::Unsupported {
                path: path.to_string(),
                feature: format!("encryption (method {})", h.crypt_method),
            });
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(Error::TooLarge {
                what: "virtual size",
                value: h.size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        h.validate_tables(path, file_len)?;
        h.parse_extensions(path, buf, cs)?;
        if h.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::Unsupported {
                path: path.to_string(),
                feature: "external data file".into(),
            });
        }
        if h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
            return Err(corrupt(
                "the raw external data autoclear bit is set, but the image has no data file".into(),
            ));
        }
        // Backing file name.
        if h.backing_file_offset != 0 {
            let len = h.backing_file_size;
            let room = cs - h.backing_file_offset;
            if len > MAX_BACKING_NAME || len as u64 > room {
                return Err(corrupt(format!(
                    "backing file name too long: backing_file_size {len} (limit {} at offset {:#x})",
                    (MAX_BACKING_NAME as u64).min(room),
                    h.backing_file_offset
                )));
            }
            let start = h.backing_file_offset as usize;
            let name = &buf[start..start + len as usize];
            // A C string to QEMU: it ends at the first NUL.
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if !name.is_empty() {
                h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
            }
        }
        Ok(h)
    }

    /// Reads the header extensions from `buf` (the header cluster, zero
    /// padded), as QEMU's qcow2_read_extensions does: they run from the end
    /// of the header to the backing file name (or the end of the cluster),
    /// and one that does not fit is an error, even the end marker.
    fn parse_extensions(&mut self, path: &str, buf: &[u8], cs: u64) -> Result<()> {
        let corrupt = |what: String| Error::Corrupt {
            path: path.to_string(),
            what,
        };
        let end = if self.backing_file_offset != 0 {
            self.backing_file_offset
        } else {
            cs
        } as usize;
        self.feature_names.clear();
        self.unknown_exts.clear();
        let mut off = self.header_length as usize;
        while off < end {
            let ty = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            off += 8;
            if off > end || len > end - off {
                return Err(corrupt(format!(
                    "header extension {ty:#x} of {len} bytes at {:#x} is too large (the extension area ends at {end:#x})",
                    off - 8
                )));
            }
            let data = &buf[off..off + len];
            match ty {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    if len >= MAX_BACKING_FORMAT {
                        return Err(corrupt(format!(
                            "backing format extension of {len} bytes too large (limit {})",
                            MAX_BACKING_FORMAT - 1
                        )));
                    }
                    let end = data.iter().position(|&c| c == 0).unwrap_or(len);
                    let s = String::from_utf8_lossy(&data[..end]).into_owned();
                    match Format::from_name(&s) {
                        Ok(f) => self.backing_format = Some(f),
                        Err(_) => self.backing_format_raw = Some(s),
                    }
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name_bytes = &e[2..];
                        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(46);
                        self.feature_names.push((
                            e[0],
                            e[1],
                            String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                        ));
                    }
                }
                EXT_CRYPTO_HEADER => {
                    return Err(corrupt(
                        "encryption header extension in an image without LUKS encryption".into(),
                    ))
                }
                EXT_DATA_FILE if self.incompatible & INCOMPAT_DATA_FILE != 0 => {
                    return Err(Error::Unsupported {
                        path: path.to_string(),
                        feature: format!("external data file '{}'", String::from_utf8_lossy(data)),
                    })
                }
                // Without the feature bit QEMU ignores the name: kept as an
                // unknown extension.
                _ => self.unknown_exts.push((ty, data.to_vec())),
            }
            off += len.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// Checks the tables the header points at, as QEMU's
    /// qcow2_validate_table does (size limit, alignment, offset range; an
    /// offset is checked even for an empty table), then what we need
    /// beyond that: tables inside the file and clear of the header.
    fn validate_tables(&self, path: &str, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let corrupt = |what: String| Error::Corrupt {
            path: path.to_string(),
            what,
        };
        // QEMU's check: `entries` of `len` bytes at `off`, at most `max`
        // bytes, the offset aligned and the end within i64.
        let qemu = |name: &str, field: &str, off: u64, entries: u64, len: u64, max: u64| {
            if entries > max / len {
                return Err(Error::TooLarge {
                    what: match name {
                        "L1 table" => "L1 table",
                        "refcount table" => "refcount table",
                        _ => "snapshot table",
                    },
                    value: entries * len,
                    limit: max,
                });
            }
            if (i64::MAX as u64 - entries * len) < off || !off.is_multiple_of(cs) {
                return Err(corrupt(format!(
                    "{name} offset invalid ({field} {off:#x}: not cluster aligned or out of range)"
                )));
            }
            Ok(())
        };
        // Ours: the table must lie inside the file and clear of the header.
        let inside = |name: &str, off: u64, bytes: u64| -> Result<()> {
            if bytes == 0 {
                return Ok(());
            }
            if off == 0 {
                return Err(corrupt(format!("{name} overlaps the header")));
            }
            match off.checked_add(bytes) {
                Some(end) if end <= file_len.div_ceil(cs) * cs => Ok(()),
                _ => Err(corrupt(format!(
                    "{name} at {off:#x} (+{bytes} bytes) lies beyond the end of the file ({file_len} bytes)"
                ))),
            }
        };
        let rt_clusters = self.refcount_table_clusters as u64;
        if rt_clusters == 0 {
            return Err(corrupt(
                "refcount_table_clusters is 0: the image has no refcount table".into(),
            ));
        }
        qemu(
            "refcount table",
            "refcount_table_offset",
            self.refcount_table_offset,
            rt_clusters,
            cs,
            MAX_REFTABLE_BYTES.max(cs),
        )?;
        qemu(
            "snapshot table",
            "snapshots_offset",
            self.snapshots_offset,
            self.nb_snapshots as u64,
            40,
            40 * MAX_SNAPSHOTS as u64,
        )?;
        let l1_bytes = self.l1_size as u64 * 8;
        qemu(
            "L1 table",
            "l1_table_offset",
            self.l1_table_offset,
            self.l1_size as u64,
            8,
            MAX_L1_BYTES,
        )?;
        let needed = l1_entries_for(self.size, self.cluster_bits, self.extended_l2());
        if (self.l1_size as u64) < needed {
            return Err(corrupt(format!(
                "L1 table too small: l1_size {} for a virtual size of {} bytes needs {needed}",
                self.l1_size, self.size
            )));
        }
        inside("L1 table", self.l1_table_offset, l1_bytes)?;
        inside(
            "refcount table",
            self.refcount_table_offset,
            rt_clusters * cs,
        )?;
        if self.nb_snapshots > 0 {
            inside("snapshot table", self.snapshots_offset, 40)?;
        }
        Ok(())
    }

    /// Serialises the header, its extensions and the backing file name into
    /// one cluster. Fails if they do not fit.
    pub fn serialize(&mut self) -> Result<Vec<u8>> {
        // The feature name table is optional: QEMU leaves it out when the
        // header cluster is too small (512-byte clusters with a backing file).
        self.serialize_with(true)
            .or_else(|_| self.serialize_with(false))
    }

    fn serialize_with(&mut self, feature_table: bool) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = Vec::with_capacity(4096);
        let hl = if self.version >= 3 {
            (self.header_length as usize).max(V3_MIN_HEADER_LEN)
        } else {
            V2_HEADER_LEN
        };
        b.resize(hl, 0);
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        // 8..20 (backing name position) filled below.
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            b[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&(hl as u32).to_be_bytes());
            if hl > 104 {
                b[104] = match self.compression {
                    CompressionType::Zlib => 0,
                    CompressionType::Zstd => 1,
                };
                let n = self.extra_fields.len().min(hl - 105);
                b[105..105 + n].copy_from_slice(&self.extra_fields[..n]);
            }
        }
        let push_ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        };
        if self.backing_file.is_some() {
            let fmt = self
                .backing_format
                .map(|f| f.name().to_string())
                .or_else(|| self.backing_format_raw.clone());
            if let Some(f) = fmt {
                push_ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
            }
        }
        if self.version >= 3 && feature_table {
            let mut table = Vec::new();
            for (ty, bit, name) in FEATURE_NAMES {
                let mut e = [0u8; 48];
                e[0] = *ty;
                e[1] = *bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                table.extend_from_slice(&e);
            }
            push_ext(&mut b, EXT_FEATURE_TABLE, &table);
        }
        for (ty, data) in &self.unknown_exts {
            push_ext(&mut b, *ty, data);
        }
        push_ext(&mut b, EXT_END, &[]);
        match &self.backing_file {
            Some(name) => {
                self.backing_file_offset = b.len() as u64;
                self.backing_file_size = name.len() as u32;
                b.extend_from_slice(name.as_bytes());
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        if b.len() > cs {
            return Err(Error::NotPossible(format!(
                "header, extensions and backing file name ({} bytes) do not fit in one cluster ({cs} bytes)",
                b.len()
            )));
        }
        Ok(b)
    }
}

/// L1 entries needed to map `size` bytes.
pub(crate) fn l1_entries_for(size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let l2_bits = cluster_bits - if extended_l2 { 4 } else { 3 };
    size.div_ceil(1u64 << (cluster_bits + l2_bits))
}
