#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| custos_proxy::framer::fuzz_framer(data));
