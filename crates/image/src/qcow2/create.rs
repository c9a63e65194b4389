//! Creating qcow2 images (`qemu-img create`); what they need is measured
//! by [`crate::ops::measure`].

use std::path::Path;

use super::header::*;
use super::{Meta, Qcow2, BM_ALL_ALLOC, L1E_OFFSET_MASK, OFLAG_COPIED};
use crate::io::{fallocate, io_err, pwrite_all, write_zeros};
use crate::{
    Compat, CompressionType, CreateOptions, Error, Format, OpenOptions, Preallocation, Result,
};

fn validate(opts: &CreateOptions, size: u64) -> Result<(u32, u32)> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(Error::InvalidOption(format!(
            "cluster size must be a power of two between 512 and 2M (got {cs})"
        )));
    }
    let cb = cs.trailing_zeros();
    let rb = opts.refcount_bits;
    if !rb.is_power_of_two() || rb > 64 {
        return Err(Error::InvalidOption(format!(
            "refcount_bits must be a power of two up to 64 (got {rb})"
        )));
    }
    let v2 = opts.compat == Compat::V2;
    if v2 && rb != 16 {
        return Err(Error::InvalidOption(
            "different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)".into(),
        ));
    }
    if v2 && opts.lazy_refcounts {
        return Err(Error::InvalidOption(
            "lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)".into(),
        ));
    }
    if v2 && opts.extended_l2 {
        return Err(Error::InvalidOption(
            "extended L2 entries are only supported with compatibility level 1.1 and above".into(),
        ));
    }
    if v2 && opts.compression_type != CompressionType::Zlib {
        return Err(Error::InvalidOption(
            "compression_type requires compatibility level 1.1 or above".into(),
        ));
    }
    if opts.extended_l2 && cs < 16384 {
        return Err(Error::InvalidOption(
            "extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        ));
    }
    if opts.backing_format.is_some() && opts.backing_file.is_none() {
        return Err(Error::InvalidOption(
            "backing format cannot be used without backing file".into(),
        ));
    }
    if opts.backing_file.is_some() && opts.preallocation != Preallocation::Off && !opts.extended_l2
    {
        return Err(Error::InvalidOption(
            "backing file and preallocation can only be used at the same time if extended_l2 is on"
                .into(),
        ));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::TooLarge {
            what: "virtual size",
            value: size,
            limit: MAX_VIRTUAL_SIZE,
        });
    }
    let l1 = l1_entries_for(size, cb, opts.extended_l2);
    if l1 * 8 > MAX_L1_BYTES {
        return Err(Error::TooLarge {
            what: "virtual size for this cluster size (L1 table)",
            value: size,
            limit: (MAX_L1_BYTES / 8) << (cb + cb - if opts.extended_l2 { 4 } else { 3 }),
        });
    }
    if let Some(b) = &opts.backing_file {
        if b.len() as u32 > MAX_BACKING_NAME {
            return Err(Error::InvalidOption(format!(
                "backing file name longer than {MAX_BACKING_NAME} bytes"
            )));
        }
    }
    Ok((cb, rb))
}

pub(crate) fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let (cb, rb) = validate(opts, size)?;
    let name = path.display().to_string();
    let cs = 1u64 << cb;
    let v3 = opts.compat == Compat::V3;
    let mut incompatible = 0;
    if opts.compression_type == CompressionType::Zstd {
        incompatible |= INCOMPAT_COMPRESSION;
    }
    if opts.extended_l2 {
        incompatible |= INCOMPAT_EXTL2;
    }
    let mut h = Header {
        version: if v3 { 3 } else { 2 },
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cb,
        size: 0,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible,
        compatible: if opts.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: 0,
        refcount_order: rb.trailing_zeros(),
        header_length: V3_HEADER_LEN,
        compression: opts.compression_type,
        extra_fields: vec![0; (V3_HEADER_LEN - 105) as usize],
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_format,
        backing_format_raw: None,
        feature_names: Vec::new(),
        unknown_exts: Vec::new(),
    };
    let header = h.serialize()?;
    // Locked before truncating, so that an image in use is not destroyed.
    let (file, locks) = crate::lock::create_file(path, &name)?;
    // Cluster 0: header; 1: refcount table; 2: first refcount block, which
    // counts clusters 0..=2. The L1 table is allocated by the resize below.
    pwrite_all(&file, &name, &header, 0)?;
    let mut rt = vec![0u8; cs as usize];
    rt[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    pwrite_all(&file, &name, &rt, cs)?;
    let mut block = vec![0u8; cs as usize];
    for c in 0..3 {
        set_entry(&mut block, h.refcount_order, c, 1);
    }
    pwrite_all(&file, &name, &block, 2 * cs)?;
    drop(locks);
    drop(file);
    // Grow to the requested size through the engine (L1 allocation).
    let o = OpenOptions {
        read_only: false,
        format: Some(Format::Qcow2),
        follow_backing: false,
        sharing: crate::Sharing::Tool,
        ..Default::default()
    };
    let req = crate::lock::Request::top(o.sharing, false)?;
    let q = Qcow2::open(path, &name, false, &o, req)?;
    q.resize(size)?;
    if opts.preallocation != Preallocation::Off {
        q.preallocate(opts.preallocation)?;
    }
    q.flush()
}

fn set_entry(block: &mut [u8], order: u32, i: u64, v: u64) {
    let bits = 1u64 << order;
    if bits < 8 {
        let per = 8 / bits;
        let bi = (i / per) as usize;
        let shift = (i % per) * bits;
        block[bi] |= (v << shift) as u8;
    } else {
        let w = (bits / 8) as usize;
        let o = i as usize * w;
        block[o..o + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
    }
}

impl Qcow2 {
    /// Allocates every L2 table and data cluster (metadata, falloc, full).
    fn preallocate(&self, mode: Preallocation) -> Result<()> {
        let mut m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        m.preallocate(self.len(), mode)
    }
}

impl Meta {
    fn preallocate(&mut self, size: u64, mode: Preallocation) -> Result<()> {
        let g = self.g;
        let clusters = size.div_ceil(g.cs);
        let per_table = g.l2_entries();
        let backed = self.h.backing_file.is_some();
        let mut c = 0u64;
        while c < clusters {
            let n = (clusters - c).min(per_table - (c % per_table));
            let (l2off, first) = self.l2_for_write(c << g.cb)?;
            let data = self.alloc_clusters(n)?;
            let step = g.step();
            {
                let t = self.l2_table(l2off)?;
                for k in 0..n as usize {
                    t[(first + k) * step] = (data + ((k as u64) << g.cb)) | OFLAG_COPIED;
                    if step == 2 {
                        // Over a backing file the subclusters stay
                        // unallocated (their content comes from below).
                        t[(first + k) * 2 + 1] = if backed { 0 } else { BM_ALL_ALLOC };
                    }
                }
            }
            let bytes = n << g.cb;
            match mode {
                Preallocation::Full => {
                    write_zeros(&self.file, &self.path, data, bytes)?;
                    self.file_end = self.file_end.max(data + bytes);
                }
                Preallocation::Falloc => {
                    fallocate(&self.file, &self.path, data, bytes)?;
                    self.file_end = self.file_end.max(data + bytes);
                }
                _ => {}
            }
            if self.file_end < data + bytes {
                self.file
                    .set_len(data + bytes)
                    .map_err(|e| io_err(&self.path, e))?;
                self.file_end = data + bytes;
            }
            self.l2_write_span(l2off, first, first + n as usize)?;
            c += n;
        }
        let _ = L1E_OFFSET_MASK;
        Ok(())
    }
}
