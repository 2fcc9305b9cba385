//! Every recipe under configs/ parses into `TrainConfig` (unknown keys would be errors) and validates.

use ferrotune_core::testkit::workspace_root;
use ferrotune_core::train_config::TrainConfig;
use std::path::Path;

fn toml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_config_in_configs_parses_and_validates() {
    let mut files = Vec::new();
    toml_files(&workspace_root().join("configs"), &mut files);
    assert!(
        files.len() >= 4,
        "expected the recipes under configs/, found {files:?}"
    );
    for f in &files {
        let cfg: TrainConfig =
            ferrotune_core::config::load_with_overrides(f, &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    // A typo in a real recipe is reported with the file and a suggestion.
    let f = workspace_root().join("configs/llama2/7B_lora.toml");
    let err =
        ferrotune_core::config::load_with_overrides::<TrainConfig>(&f, &["lora_rnak=4".into()])
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("7B_lora.toml") && err.contains("did you mean `lora_rank`?"),
        "{err}"
    );
}
