#![no_main]
//! Whole VHDX images (dynamic, fixed, differencing, dirty log) with fuzzed
//! patches and truncations: opening, log replay, mapping, reading.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, patches)) = data.split_first() else { return };
    let templates = vhdkit_fuzz::vhdx_templates();
    let template = &templates[usize::from(pick) % templates.len()];
    vhdkit_fuzz::open_and_walk(vhdkit_fuzz::patched(template, patches));
});
