//! NATS subject rules shared by the spec, both bus backends and the test harness:
//! valid subjects and patterns, and wildcard matching.

/// Whether `subject` is a valid subject to publish to (no wildcards, no empty tokens).
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(' '))
}

/// Whether `pattern` is a valid subscription subject (`*` tokens, a final `>`).
pub fn valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    !pattern.is_empty()
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| !t.is_empty() && !t.contains(' ') && (*t != ">" || i == tokens.len() - 1))
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("*.b.>", "x.b.y"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn subject_validity() {
        assert!(valid_subject("shop.orders.created"));
        assert!(!valid_subject("shop.*"));
        assert!(!valid_subject("shop..x"));
        assert!(!valid_subject(""));
        assert!(valid_pattern("shop.>"));
        assert!(valid_pattern("*.orders"));
        assert!(!valid_pattern("shop.>.x"));
    }
}
