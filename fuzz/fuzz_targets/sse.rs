#![no_main]
//! `cargo fuzz run sse`: see `cloudci_fuzz::sse`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudci_fuzz::sse(data));
