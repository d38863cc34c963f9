#![no_main]
//! Whole VHD images (dynamic, fixed, differencing) with fuzzed patches and
//! truncations: opening, mapping and reading every extent.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, patches)) = data.split_first() else { return };
    let templates = vhdkit_fuzz::vhd_templates();
    let template = &templates[usize::from(pick) % templates.len()];
    vhdkit_fuzz::open_and_walk(vhdkit_fuzz::patched(template, patches));
});
