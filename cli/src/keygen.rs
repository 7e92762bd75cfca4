//! `st2kv keygen`: writing the keyring file nodes encrypt secrets with
//! ([`st2kv_api::keyring::Keyring`]). Everything happens on the local file; no server is
//! contacted and no credentials or config are read.
//!
//! - without `--rotate`/`--retire`: a new keyring with one active key, refusing to replace an
//!   existing file unless `--force` is given;
//! - `--rotate`: the file's keyring plus a new key, which becomes the active one;
//! - `--retire ID`: the file's keyring without key `ID`, which must not be the active one.
//!
//! The file is always written with mode 0600, by replacing it atomically. Output never shows key
//! material: only key ids.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use st2kv_api::keyring::{Keyring, KeyringError};

use crate::args::KeygenArgs;
use crate::commands::Outcome;
use crate::output::{self, Format};

/// Run `st2kv keygen`.
pub fn run(a: &KeygenArgs, format: Format) -> Outcome {
    let path = a.key_path.as_path();
    let shown = path.display();
    let result = if a.rotate {
        rotate(path).map(|(ring, added)| {
            let text = format!(
                "Added key {added} (now active) to {shown}; copy {shown} to every node, then run \
                 `st2kv key reencrypt`"
            );
            (ring, text, Some(("added_key", added)))
        })
    } else if let Some(id) = &a.retire {
        retire(path, id).map(|(ring, id)| {
            let text = format!(
                "Retired key {id} from {shown} (active key {}); copy {shown} to every node",
                ring.active
            );
            (ring, text, Some(("retired_key", id)))
        })
    } else {
        generate(path, a.force).map(|ring| {
            let text = format!("Wrote a new keyring to {shown} (active key {})", ring.active);
            (ring, text, None)
        })
    };
    match result {
        Err(e) => Outcome::fail(e),
        Ok((_, text, _)) if format == Format::Table => Outcome::ok(text),
        Ok((ring, _, change)) => {
            let mut doc: BTreeMap<&str, Value> = BTreeMap::new();
            doc.insert("key_path", Value::String(shown.to_string()));
            doc.insert("active_key", Value::String(ring.active.clone()));
            doc.insert("key_ids", ring.keys.iter().map(|k| Value::String(k.id.clone())).collect());
            if let Some((name, id)) = change {
                doc.insert(name, Value::String(id));
            }
            Outcome::ok(if format == Format::Json { output::to_json(&doc) } else { output::to_yaml(&doc) })
        }
    }
}

/// Write a new keyring to `path`; an existing file is replaced only with `force`.
pub fn generate(path: &Path, force: bool) -> Result<Keyring, String> {
    let ring = Keyring::generate();
    ring.save(path, force).map_err(|e| e.to_string())?;
    Ok(ring)
}

/// Add a new active key to the keyring in `path`; returns the keyring and the new key's id.
pub fn rotate(path: &Path) -> Result<(Keyring, String), String> {
    let mut ring = Keyring::load(path).map_err(|e| e.to_string())?;
    let added = ring.rotate();
    ring.save(path, true).map_err(|e| e.to_string())?;
    Ok((ring, added))
}

/// Remove key `id` (any case, as `key_id` prints them or not) from the keyring in `path`; returns
/// the keyring and the id removed.
pub fn retire(path: &Path, id: &str) -> Result<(Keyring, String), String> {
    let mut ring = Keyring::load(path).map_err(|e| e.to_string())?;
    let id = id.trim().to_ascii_lowercase();
    match ring.retire(&id) {
        Ok(()) => {}
        Err(KeyringError::UnknownKey(_)) => {
            let ids: Vec<&str> = ring.keys.iter().map(|k| k.id.as_str()).collect();
            return Err(format!(
                "key {id} is not in the keyring {} (it holds {})",
                path.display(),
                ids.join(", ")
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    ring.save(path, true).map_err(|e| e.to_string())?;
    Ok((ring, id))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    fn args(path: &Path) -> KeygenArgs {
        KeygenArgs { key_path: path.to_path_buf(), force: false, rotate: false, retire: None }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn keyring_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("keyring.json")
    }

    #[test]
    fn keygen_writes_a_private_keyring_and_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_in(&dir);
        let out = run(&args(&path), Format::Table);
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(
            (out.stdout, out.error, out.code),
            (format!("Wrote a new keyring to {} (active key {})", path.display(), ring.active), None, 0)
        );
        assert_eq!((ring.keys.len(), mode(&path)), (1, 0o600));

        let before = std::fs::read_to_string(&path).unwrap();
        let out = run(&args(&path), Format::Table);
        assert_eq!(out.code, 1);
        assert_eq!(
            out.error,
            Some(format!("keyring {} already exists; pass --force to overwrite it", path.display()))
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "left untouched");

        let out = run(&KeygenArgs { force: true, ..args(&path) }, Format::Table);
        assert_eq!(out.code, 0, "{out:?}");
        let replaced = Keyring::load(&path).unwrap();
        assert_ne!(replaced.active, ring.active);
        assert_eq!((replaced.keys.len(), mode(&path)), (1, 0o600));
    }

    #[test]
    fn rotate_adds_an_active_key_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_in(&dir);
        let old = generate(&path, false).unwrap();
        let out = run(&KeygenArgs { rotate: true, ..args(&path) }, Format::Table);
        assert_eq!(out.code, 0, "{out:?}");
        let ring = Keyring::load(&path).unwrap();
        assert_ne!(ring.active, old.active);
        assert_eq!(ring.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [&old.active, &ring.active]);
        assert_eq!(ring.keys[0].key, old.keys[0].key, "the old key is kept as it was");
        let p = path.display();
        assert_eq!(
            out.stdout,
            format!(
                "Added key {} (now active) to {p}; copy {p} to every node, then run `st2kv key reencrypt`",
                ring.active
            )
        );
        assert_eq!(mode(&path), 0o600);
        // Secrets encrypted before the rotation stay readable.
        let aad = st2kv_api::keyring::aad("st2kv.system", "", "k");
        assert_eq!(ring.decrypt(&old.encrypt("v", &aad), &aad).unwrap(), "v");

        // Rotating needs an existing, valid keyring.
        let missing = dir.path().join("none.json");
        let out = run(&KeygenArgs { rotate: true, ..args(&missing) }, Format::Table);
        assert!(out.error.unwrap().starts_with("cannot read keyring"));
        assert!(!missing.exists());
        std::fs::write(&missing, "{}").unwrap();
        let out = run(&KeygenArgs { rotate: true, ..args(&missing) }, Format::Table);
        assert!(out.error.unwrap().contains("is not valid"));
    }

    #[test]
    fn retire_removes_only_a_key_that_is_not_active() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_in(&dir);
        let old = generate(&path, false).unwrap().active;
        let (_, new) = rotate(&path).unwrap();
        let retire_args = |id: &str| KeygenArgs { retire: Some(id.into()), ..args(&path) };

        let out = run(&retire_args(&new), Format::Table);
        assert_eq!(
            (out.error, out.code),
            (Some(format!("key {new} is the active key; rotate first, then retire it")), 1)
        );
        let out = run(&retire_args("00000000"), Format::Table);
        let err = out.error.unwrap();
        assert!(err.starts_with("key 00000000 is not in the keyring"), "{err}");
        assert!(err.contains(&old) && err.contains(&new), "{err}");
        assert_eq!(Keyring::load(&path).unwrap().keys.len(), 2, "failed retires change nothing");

        // Ids are accepted in any case.
        let out = run(&retire_args(&old.to_ascii_uppercase()), Format::Table);
        let p = path.display();
        assert_eq!(
            (out.stdout, out.code),
            (format!("Retired key {old} from {p} (active key {new}); copy {p} to every node"), 0)
        );
        let ring = Keyring::load(&path).unwrap();
        assert_eq!((ring.active.as_str(), ring.keys.len(), mode(&path)), (new.as_str(), 1, 0o600));
    }

    #[test]
    fn json_output_names_key_ids_but_never_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_in(&dir);
        let out = run(&args(&path), Format::Json);
        let ring = Keyring::load(&path).unwrap();
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"key_path": path.display().to_string(), "active_key": ring.active,
                               "key_ids": [ring.active]})
        );
        let out = run(&KeygenArgs { rotate: true, ..args(&path) }, Format::Yaml);
        let ring = Keyring::load(&path).unwrap();
        let doc: Value = serde_yaml::from_str(&out.stdout).unwrap();
        assert_eq!(doc["added_key"], Value::String(ring.active.clone()), "{}", out.stdout);
        assert_eq!(doc["key_ids"].as_array().map(Vec::len), Some(2));
        for k in &ring.keys {
            assert!(!out.stdout.contains(&k.key));
        }
    }
}
