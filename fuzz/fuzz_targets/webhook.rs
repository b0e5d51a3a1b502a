#![no_main]
//! `cargo fuzz run webhook`: see `cloudci_fuzz::webhook`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudci_fuzz::webhook(data));
