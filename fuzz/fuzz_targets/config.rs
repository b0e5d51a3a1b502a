#![no_main]
//! `cargo fuzz run config`: see `cloudci_fuzz::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudci_fuzz::config(data));
