//! The sendfile path's HTTP head: a request line (is it a boot file, and its percent-decoded
//! path) and a Range header against a file's length. A part is inside the file and ordered; a
//! decoded path holds no `%` escape the encoder would have produced from nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plinth_api::fuzzing::request_line(data);
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    if let Ok(h) = std::str::from_utf8(&data[8..])
        && let Some(Some((start, end))) = plinth_api::fuzzing::range(h, len)
    {
        assert!(start <= end, "{h:?} {len}: {start}-{end}");
        assert!(end < len, "{h:?} {len}: {start}-{end} past the end");
    }
});
