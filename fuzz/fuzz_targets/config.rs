//! The TOML configuration file: parsed over the defaults and validated, as at start and on
//! reload.
#![no_main]

use echomesh_node::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml_str(text);
    }
});
