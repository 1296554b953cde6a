//! How much memory one GPU of a SkyPilot accelerator has, so that `validate` refuses a node
//! whose tenants ask for more than its GPU holds before anything is rented. The table holds
//! common accelerators by SkyPilot's names; `nodes[].gpu_memory` overrides it (and covers
//! the rest).

/// GiB of memory of one GPU, by SkyPilot accelerator name (compared without case).
const MEMORY_GIB: &[(&str, u64)] = &[
    ("B200", 180),
    // The 144 GB (HBM3e) variant; the 96 GB one needs nodes[].gpu_memory to be judged.
    ("GH200", 144),
    ("H200", 141),
    ("H100", 80),
    ("H100-MEGA", 80),
    ("H800", 80),
    ("A100-80GB", 80),
    ("A100", 40),
    ("L40S", 48),
    ("L40", 48),
    ("L4", 24),
    ("A10G", 24),
    ("A10", 24),
    ("A40", 48),
    ("RTX6000", 24),
    ("RTXA6000", 48),
    ("A6000", 48),
    ("RTX4090", 24),
    ("RTX3090", 24),
    ("T4", 16),
    ("V100-32GB", 32),
    ("V100", 16),
    ("P100", 16),
    ("K80", 12),
    ("MI300X", 192),
];

const GIB: u64 = 1 << 30;

/// Bytes of memory of one GPU of `accelerators` (`NAME` or `NAME:COUNT`), when the table
/// knows the name.
pub fn gpu_memory_bytes(accelerators: &str) -> Option<u64> {
    let name = accelerators.split(':').next()?;
    MEMORY_GIB
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, gib)| gib * GIB)
}

/// `80G`, `80GiB`, `80GB`, `24576M`, `24576MiB` or plain bytes, as a byte count; GPU memory is
/// counted in binary units whichever suffix is used.
pub fn parse_memory(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

/// `bytes` in GiB with one decimal.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_accelerators_and_counts_give_one_gpus_memory() {
        assert_eq!(gpu_memory_bytes("H100:8"), Some(80 * GIB));
        assert_eq!(gpu_memory_bytes("l4"), Some(24 * GIB));
        assert_eq!(gpu_memory_bytes("A100-80GB:1"), Some(80 * GIB));
        assert_eq!(gpu_memory_bytes("A100"), Some(40 * GIB));
        assert_eq!(gpu_memory_bytes("TPU-v5"), None);
    }

    #[test]
    fn memory_sizes_parse_in_binary_units() {
        assert_eq!(parse_memory("80G"), Some(80 * GIB));
        assert_eq!(parse_memory("80 GiB"), Some(80 * GIB));
        assert_eq!(parse_memory("1.5GB"), Some(3 * GIB / 2));
        assert_eq!(parse_memory("512M"), Some(512 << 20));
        assert_eq!(parse_memory("1000"), Some(1000));
        for bad in ["", "G", "80 parsecs", "-1G", "0"] {
            assert_eq!(parse_memory(bad), None, "{bad:?}");
        }
    }
}
