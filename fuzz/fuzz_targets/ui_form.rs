//! The web UI's form bodies (application/x-www-form-urlencoded) and Cookie headers: parsed
//! without a panic, every field name and value valid UTF-8 (they are Strings).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (body, cookie) = data.split_at(split);
    let fields = plinth_api::fuzzing::form_and_cookie(body, cookie);
    assert!(fields.len() <= body.len() + 1);
});
