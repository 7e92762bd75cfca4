//! The one error type of this crate.

/// Why a rule could not be parsed, validated, matched or rendered.
///
/// Both variants carry a complete, human-readable message that already names the field or
/// parameter path at fault (`trigger.parameters.delta: must be a positive integer`,
/// `os_keystone_endpoint: Key "system.foo" not found`); callers show it as is.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule text or one of its fields is wrong: a parse or validation failure, or a criterion
    /// whose rendered regex pattern does not compile.
    #[error("{0}")]
    Invalid(String),
    /// A template failed while rendering (missing key with no default, denied decryption, a
    /// runtime template error, `st2kv.user` in a rule).
    #[error("{0}")]
    Render(String),
}
