#![no_main]
//! `cargo fuzz run verify`: see `cloudci_fuzz::verify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudci_fuzz::verify(data));
