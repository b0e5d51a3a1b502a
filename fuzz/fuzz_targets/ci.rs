#![no_main]
//! `cargo fuzz run ci`: see `cloudci_fuzz::ci`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudci_fuzz::ci(data));
