//! What `qemu-img info --output=json` says of an uploaded qcow2 image, checked as an upload's
//! is: accepted only self-contained (no backing or data file), unencrypted, with a size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(size) = plinth_core::images::fuzzing::qcow2_info(data) {
        let v: serde_json::Value = serde_json::from_slice(data).expect("it parsed");
        assert!(v.get("backing-filename").is_none() && v.get("full-backing-filename").is_none());
        assert_ne!(v.get("encrypted").and_then(|e| e.as_bool()), Some(true));
        let d = v.pointer("/format-specific/data");
        assert!(d.and_then(|d| d.get("data-file")).is_none());
        assert!(d.and_then(|d| d.get("encrypt")).is_none());
        assert_eq!(v.get("virtual-size").and_then(|s| s.as_u64()), Some(size));
    }
});
