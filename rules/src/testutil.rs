//! A fake [`Lookup`] for the unit tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::render::{Lookup, LookupError, RenderOptions, Renderer, Scope, Stored};

/// One recorded [`Lookup::decrypt`] call: the key it named, and the value.
pub(crate) type DecryptCall = (Option<(Scope, String)>, String);

/// Keys in memory; secrets are stored as `enc:<plaintext>`. Keys in `deny_read` fail `get`, keys
/// in `deny_decrypt` fail `decrypt`; `decrypts` records every decrypt call.
#[derive(Default)]
pub(crate) struct FakeLookup {
    pub keys: HashMap<(Scope, String), Stored>,
    pub deny_read: HashSet<(Scope, String)>,
    pub deny_decrypt: HashSet<(Scope, String)>,
    pub decrypts: Mutex<Vec<DecryptCall>>,
}

impl FakeLookup {
    pub fn with(mut self, scope: Scope, name: &str, value: &str) -> Self {
        self.keys.insert((scope, name.into()), Stored { value: value.into(), secret: false });
        self
    }

    pub fn with_secret(mut self, scope: Scope, name: &str, plaintext: &str) -> Self {
        self.keys.insert((scope, name.into()), Stored { value: format!("enc:{plaintext}"), secret: true });
        self
    }

    pub fn deny_read(mut self, scope: Scope, name: &str) -> Self {
        self.deny_read.insert((scope, name.into()));
        self
    }

    pub fn deny_decrypt(mut self, scope: Scope, name: &str) -> Self {
        self.deny_decrypt.insert((scope, name.into()));
        self
    }
}

impl Lookup for FakeLookup {
    fn get(&self, scope: Scope, name: &str) -> Result<Option<Stored>, LookupError> {
        if self.deny_read.contains(&(scope, name.to_string())) {
            return Err(LookupError::Denied(format!("read of {name} denied")));
        }
        Ok(self.keys.get(&(scope, name.to_string())).cloned())
    }

    fn decrypt(&self, key: Option<(Scope, &str)>, value: &str) -> Result<String, LookupError> {
        self.decrypts.lock().unwrap().push((key.map(|(s, n)| (s, n.to_string())), value.to_string()));
        if let Some((scope, name)) = key {
            if self.deny_decrypt.contains(&(scope, name.to_string())) {
                return Err(LookupError::Denied(format!("decrypting {name} needs admin")));
            }
        }
        value
            .strip_prefix("enc:")
            .map(str::to_string)
            .ok_or_else(|| LookupError::Failed("not a ciphertext".to_string()))
    }
}

pub(crate) fn renderer(lookup: FakeLookup, user_scope: bool, collect: bool) -> (Renderer, Arc<FakeLookup>) {
    let lookup = Arc::new(lookup);
    (Renderer::new(lookup.clone(), RenderOptions { user_scope, collect }), lookup)
}
