//! The sysfs attribute parsers: numa_node, afu_id, errors/errors, dev, ports_num and id.
#![no_main]

use k8s_accelerator_devplugin::discovery::sysfs::{
    afu_id_is_blank, parse_dev, parse_error_bits, parse_numa_node, parse_small_uint,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Some(node)) = parse_numa_node(text) {
        assert!(node >= 0);
    }
    if let Some(blank) = afu_id_is_blank(text) {
        assert_eq!(text.trim().len(), 32);
        assert_eq!(blank, text.trim().bytes().all(|b| b.eq_ignore_ascii_case(&b'f')));
    }
    if let Some(bits) = parse_error_bits(text) {
        let t = text.trim();
        if let Some(hex) = t.strip_prefix("0x") {
            assert_eq!(u64::from_str_radix(hex, 16).ok(), Some(bits));
        }
    }
    if let Some((major, minor)) = parse_dev(text) {
        assert_eq!(parse_dev(&format!("{major}:{minor}\n")), Some((major, minor)));
    }
    if let Some(n) = parse_small_uint(text) {
        assert!(n < 1_000_000_000);
    }
});
