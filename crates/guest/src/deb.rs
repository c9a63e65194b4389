//! Unpacking .deb files: an `ar` archive holding `debian-binary`,
//! `control.tar.*` and `data.tar.*` (xz, zstd, gzip or plain).
//!
//! The ar reader is a few lines of our own: a .deb uses only the common
//! subset of the format (no GNU long-name table), and reading it streaming
//! from the file avoids holding a 100 MB kernel package in memory.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
const AR_HEADER: usize = 60;

/// A member of an ar archive: name, offset of its data and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of an ar archive.
pub fn ar_members<R: Read + Seek>(r: &mut R, what: &str) -> Result<Vec<ArMember>> {
    let total = r.seek(SeekFrom::End(0)).ctx(|| format!("reading {what}"))?;
    r.seek(SeekFrom::Start(0))
        .ctx(|| format!("reading {what}"))?;
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, what, "file too short for an ar archive")?;
    if &magic != AR_MAGIC {
        return Err(Error::format(
            what,
            "not a Debian package (no ar archive magic)",
        ));
    }
    let mut pos = 8u64;
    let mut out = Vec::new();
    while pos < total {
        let mut h = [0u8; AR_HEADER];
        read_exact_or(r, &mut h, what, "truncated ar member header")?;
        if &h[58..60] != b"`\n" {
            return Err(Error::format(
                what,
                format!("corrupt ar member header at offset {pos}"),
            ));
        }
        let name = String::from_utf8_lossy(&h[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Error::format(what, format!("bad size in ar member header of {name:?}"))
            })?;
        let offset = pos + AR_HEADER as u64;
        if offset.checked_add(size).is_none_or(|end| end > total) {
            return Err(Error::format(
                what,
                format!("ar member {name:?} ({size} bytes) extends beyond the end of the file (truncated download?)"),
            ));
        }
        out.push(ArMember { name, offset, size });
        // Members are padded to an even offset.
        pos = offset + size + (size & 1);
        r.seek(SeekFrom::Start(pos))
            .ctx(|| format!("reading {what}"))?;
    }
    Ok(out)
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str, msg: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::format(what, msg)
        } else {
            Error::io(format!("reading {what}"), e)
        }
    })
}

/// Wraps `r` in the decompressor that `name`'s extension calls for.
pub fn decompressor<'a, R: Read + 'a>(name: &str, r: R, what: &str) -> Result<Box<dyn Read + 'a>> {
    Ok(if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(r))
    } else if name.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(r).ctx(|| format!("opening zstd stream of {what}"))?,
        )
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if name.ends_with(".tar") || !name.contains('.') {
        Box::new(r)
    } else {
        return Err(Error::format(
            what,
            format!("unsupported compression of {name}"),
        ));
    })
}

/// Decompresses a whole buffer according to `name`'s extension, refusing to
/// produce more than `limit` bytes.
pub fn decompress_all(name: &str, data: &[u8], limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut d = decompressor(name, data, what)?.take(limit + 1);
    d.read_to_end(&mut out)
        .map_err(|e| Error::format(what, format!("corrupt compressed data: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::format(
            what,
            format!("decompresses to more than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Unpacks the data archive of the .deb at `deb` into `dest` (which must
/// exist). Paths leaving `dest` are refused by the tar crate's `unpack_in`.
pub fn unpack_data(deb: &Path, dest: &Path) -> Result<()> {
    let what = deb.display().to_string();
    let mut f = File::open(deb).ctx(|| format!("opening {what}"))?;
    let members = ar_members(&mut f, &what)?;
    if members.first().map(|m| m.name.as_str()) != Some("debian-binary") {
        return Err(Error::format(
            &what,
            "not a Debian package (first member is not debian-binary)",
        ));
    }
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| Error::format(&what, "no data.tar member"))?;
    f.seek(SeekFrom::Start(data.offset))
        .ctx(|| format!("reading {what}"))?;
    let reader = decompressor(&data.name, BufReader::new(f).take(data.size), &what)?;
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    let entries = ar
        .entries()
        .map_err(|e| Error::format(&what, format!("corrupt {}: {e}", data.name)))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::format(&what, format!("corrupt {}: {e}", data.name)))?;
        // Device nodes in a package would need root and mean nothing to us.
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        entry
            .unpack_in(dest)
            .map_err(|e| Error::format(&what, format!("unpacking {}: {e}", data.name)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    pub(crate) fn ar_bytes(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = AR_MAGIC.to_vec();
        for (name, data) in members {
            let h = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                data.len()
            );
            assert_eq!(h.len(), 60);
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
        }
        v
    }

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "./bin/hello", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn deb_with(data_name: &str, data: &[u8]) -> Vec<u8> {
        ar_bytes(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", b"x"),
            (data_name, data),
        ])
    }

    #[test]
    fn ar_lists_members_with_padding() {
        let bytes = ar_bytes(&[("a", b"odd"), ("b/", b"even")]);
        let m = ar_members(&mut Cursor::new(bytes), "t").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "a");
        assert_eq!(m[1].name, "b");
        assert_eq!(m[1].offset, 8 + 60 + 4 + 60);
    }

    #[test]
    fn ar_truncated_and_garbage() {
        let mut bytes = ar_bytes(&[("a", b"0123456789")]);
        bytes.truncate(bytes.len() - 3);
        let e = ar_members(&mut Cursor::new(bytes), "t.deb").unwrap_err();
        assert!(e.to_string().contains("beyond the end"), "{e}");
        let e =
            ar_members(&mut Cursor::new(b"PK\x03\x04 not a deb".to_vec()), "t.deb").unwrap_err();
        assert!(e.to_string().contains("no ar archive magic"), "{e}");
        let mut bad = AR_MAGIC.to_vec();
        bad.extend_from_slice(&[b'x'; 60]);
        let e = ar_members(&mut Cursor::new(bad), "t.deb").unwrap_err();
        assert!(e.to_string().contains("corrupt ar member header"), "{e}");
    }

    fn unpack(deb: &[u8]) -> (tempfile::TempDir, Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, deb).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let r = unpack_data(&p, &out);
        (dir, r)
    }

    #[test]
    fn unpacks_each_compression() {
        let tar = tar_bytes();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let xz = xz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        for (name, data) in [
            ("data.tar.xz", &xz),
            ("data.tar.zst", &zst),
            ("data.tar.gz", &gz),
            ("data.tar", &tar),
        ] {
            let (dir, r) = unpack(&deb_with(name, data));
            r.unwrap();
            assert_eq!(
                std::fs::read(dir.path().join("out/bin/hello")).unwrap(),
                b"hello",
                "{name}"
            );
        }
    }

    #[test]
    fn truncated_xz_is_a_clear_error() {
        let tar = tar_bytes();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let mut xz = xz.finish().unwrap();
        xz.truncate(xz.len() / 2);
        let (_d, r) = unpack(&deb_with("data.tar.xz", &xz));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("data.tar.xz"), "{e}");
    }

    #[test]
    fn not_a_deb() {
        let (_d, r) = unpack(&ar_bytes(&[("foo", b"bar")]));
        assert!(r.unwrap_err().to_string().contains("debian-binary"));
        let (_d, r) = unpack(&ar_bytes(&[("debian-binary", b"2.0\n")]));
        assert!(r.unwrap_err().to_string().contains("no data.tar"));
        let (_d, r) = unpack(&deb_with("data.tar.lz4", b"x"));
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("unsupported compression"));
    }

    #[test]
    fn decompress_limit() {
        let big = vec![0u8; 10000];
        let zst = zstd::encode_all(&big[..], 1).unwrap();
        assert_eq!(
            decompress_all("x.zst", &zst, 10000, "t").unwrap().len(),
            10000
        );
        let e = decompress_all("x.zst", &zst, 100, "t").unwrap_err();
        assert!(e.to_string().contains("more than 100"), "{e}");
        let e = decompress_all("x.xz", b"garbage", 100, "t").unwrap_err();
        assert!(e.to_string().contains("corrupt compressed data"), "{e}");
    }
}
