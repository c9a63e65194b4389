//! `-o` creation options (`-o cluster_size=64k,compat=1.1,...`): parsing
//! and validation as qemu-img does them, shared by create, convert and
//! measure.

use super::size;
use crate::{Compat, CompressionType, CreateOptions, Format, Preallocation};

/// A bad `-o` option; the messages are qemu-img's.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("Invalid parameter '{key}' for format {format}")]
    NotForFormat { key: String, format: Format },
    #[error("Invalid parameter '{0}'")]
    Unknown(String),
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    NotBool(String),
    #[error(
        "Invalid image size '{0}': use a number of bytes with an optional k, M, G, T, P or E suffix"
    )]
    BadSize(String),
    #[error("Cluster size must be a power of two between 512 and 2048k")]
    ClusterSize,
    #[error("Refcount width must be a power of two and may not exceed 64 bits")]
    RefcountWidth,
    #[error("Unknown file format '{0}' (supported: raw, qcow2)")]
    BackingFormat(String),
    /// A value the option's parser refused (compat, compression, ...).
    #[error(transparent)]
    Value(#[from] crate::Error),
    /// Options that do not go together.
    #[error("{0}")]
    Conflict(&'static str),
}

/// Parses `-o a=b,c=d` (several `-o` accumulate), qemu's ",," escaping a
/// comma inside a value.
pub fn parse_options(opts: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in opts {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = group.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for item in items.into_iter().filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None if item == "help" || item == "?" => out.push(("help".into(), String::new())),
                None => out.push((item, "on".to_string())),
            }
        }
    }
    out
}

fn parse_bool(key: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(OptionError::NotBool(key.to_string())),
    }
}

/// What `-o help` prints.
pub const CREATE_OPTIONS_HELP: &str = "Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
  cluster_size=<size>    - qcow2 cluster size (default 65536)
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression (zlib, zstd)
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
";

/// Applies `-o` options to create options (`create`, `convert` and
/// `measure` share them), checking them as qemu-img does.
pub fn apply_create_options(
    opts: &mut CreateOptions,
    pairs: &[(String, String)],
) -> Result<(), OptionError> {
    for (k, v) in pairs {
        let qcow2_only = matches!(
            k.as_str(),
            "cluster_size"
                | "compat"
                | "lazy_refcounts"
                | "extended_l2"
                | "refcount_bits"
                | "compression_type"
                | "backing_file"
                | "backing_fmt"
        );
        if qcow2_only && opts.format != Format::Qcow2 {
            return Err(OptionError::NotForFormat {
                key: k.clone(),
                format: opts.format,
            });
        }
        match k.as_str() {
            "size" => {
                opts.size =
                    Some(size::parse_size(v).ok_or_else(|| OptionError::BadSize(v.clone()))?)
            }
            "cluster_size" => {
                opts.cluster_size = size::parse_size(v)
                    .filter(|c| c.is_power_of_two() && (512..=2 << 20).contains(c))
                    .ok_or(OptionError::ClusterSize)?
            }
            "compat" => opts.compat = Compat::from_name(v)?,
            "lazy_refcounts" => opts.lazy_refcounts = parse_bool(k, v)?,
            "extended_l2" => opts.extended_l2 = parse_bool(k, v)?,
            "refcount_bits" => {
                opts.refcount_bits = v
                    .parse()
                    .ok()
                    .filter(|b: &u32| b.is_power_of_two() && *b <= 64)
                    .ok_or(OptionError::RefcountWidth)?
            }
            "compression_type" => opts.compression_type = CompressionType::from_name(v)?,
            "preallocation" => opts.preallocation = Preallocation::from_name(v)?,
            "backing_file" => opts.backing_file = Some(v.clone()),
            "backing_fmt" => {
                opts.backing_format =
                    Some(Format::from_name(v).map_err(|_| OptionError::BackingFormat(v.clone()))?)
            }
            _ => return Err(OptionError::Unknown(k.clone())),
        }
    }
    if opts.format == Format::Qcow2 && opts.compat == Compat::V2 {
        if opts.refcount_bits != 16 {
            return Err(OptionError::Conflict(
                "Different refcount widths than 16 bits require compatibility level 1.1 \
                 or above (use version=v3 or greater)",
            ));
        }
        if opts.lazy_refcounts {
            return Err(OptionError::Conflict(
                "Lazy refcounts only supported with compatibility level 1.1 and above \
                 (use version=v3 or greater)",
            ));
        }
        if opts.extended_l2 {
            return Err(OptionError::Conflict("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if opts.compression_type != CompressionType::Zlib {
            return Err(OptionError::Conflict("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
    }
    if opts.extended_l2 && opts.cluster_size < 16384 {
        return Err(OptionError::Conflict(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_commas_and_flags() {
        let p = parse_options(&["a=1,,2,b".into(), "c=x".into()]);
        assert_eq!(
            p,
            vec![
                ("a".into(), "1,2".into()),
                ("b".into(), "on".into()),
                ("c".into(), "x".into())
            ]
        );
    }

    #[test]
    fn validates_like_qemu() {
        let mut o = CreateOptions::default();
        let bad = |o: &mut CreateOptions, k: &str, v: &str| {
            apply_create_options(o, &[(k.into(), v.into())]).unwrap_err()
        };
        assert!(matches!(
            bad(&mut o, "cluster_size", "3000"),
            OptionError::ClusterSize
        ));
        assert!(matches!(
            bad(&mut o, "refcount_bits", "3"),
            OptionError::RefcountWidth
        ));
        assert!(matches!(bad(&mut o, "nope", "1"), OptionError::Unknown(_)));
        let mut o = CreateOptions::default();
        let pairs = parse_options(&["compat=0.10,lazy_refcounts=on".into()]);
        assert!(matches!(
            apply_create_options(&mut o, &pairs),
            Err(OptionError::Conflict(_))
        ));
        let mut o = CreateOptions {
            format: Format::Raw,
            ..Default::default()
        };
        assert!(matches!(
            bad(&mut o, "cluster_size", "4k"),
            OptionError::NotForFormat { .. }
        ));
        let mut o = CreateOptions::default();
        let pairs = parse_options(&["cluster_size=4k,size=1M,extended_l2=off".into()]);
        apply_create_options(&mut o, &pairs).unwrap();
        assert_eq!((o.cluster_size, o.size), (4096, Some(1 << 20)));
    }
}
