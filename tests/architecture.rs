//! Architecture invariant (issue 9): the erased engine in `src/engine/`
//! imports nothing of the public API (`crate::api`), the typed layers
//! (`crate::typed`), persistence (`crate::persist`), nor the public kind
//! traits. Checked on the source text, so a violation fails `cargo test`.

use std::path::Path;

#[test]
fn engine_imports_no_public_api_typed_layer_or_persistence() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let forbidden = [
        "crate::api",
        "crate::typed",
        "crate::persist",
        "AsyncQuery",
        "QueryCx",
        "kinds::",
        "crate::Database",
        "crate::View",
    ];
    let mut files = 0;
    let mut violations = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/engine exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for f in forbidden {
                if code.contains(f) {
                    violations.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files >= 8, "only {files} engine files found");
    assert!(
        violations.is_empty(),
        "engine layering broken:\n{}",
        violations.join("\n")
    );
}
