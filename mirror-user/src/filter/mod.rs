//! What a rule means, independent of the kernel: the semantics and a plain
//! reference classifier ([`classify`]), the compiled bit-vector tables the
//! kernel classifies with ([`ruleset`]), and the live rule edits `mirror rules`
//! and a reload may make ([`rules`]). Pure Rust: it may use `config`, and
//! loads nothing into the kernel (that is `kernel::rule_maps`).

pub mod classify;
pub mod rules;
pub mod ruleset;
