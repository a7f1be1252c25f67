//! NATS subject rules shared by the spec, both bus backends and the test harness:
//! valid subjects and patterns, wildcard matching, and the reserved namespaces no grant
//! reaches.

/// The host's inbox prefix: reply subjects of requests made through the host.
pub const INBOX_PREFIX: &str = "_INBOX.";
/// The host's own control subjects (reserved for host-to-host traffic).
pub const CONTROL_PREFIX: &str = "_WEFT.";

/// Why `subject` (or a pattern starting with the same literal tokens) is out of every
/// grant's reach, or `None` if it is an ordinary subject. Reserved: every `$` namespace
/// (the broker's own API: `$JS.` JetStream, `$KV.` key-value buckets, `$O.` object
/// stores, `$SYS.` the system account), the host's inboxes (`_INBOX.`) and its control
/// subjects (`_WEFT.`). Wildcards in a grant never match these, and a grant that names
/// one is refused.
pub fn reserved(subject: &str) -> Option<&'static str> {
    let first = subject.split('.').next().unwrap_or_default();
    if first.starts_with('$') {
        Some(
            "`$` subjects are the broker's own API (`$JS.` streams, `$KV.` buckets, `$O.` object stores, `$SYS.` the server)",
        )
    } else if first == INBOX_PREFIX.trim_end_matches('.') {
        Some("`_INBOX.` subjects are reply inboxes of requests in flight")
    } else if first == CONTROL_PREFIX.trim_end_matches('.') {
        Some("`_WEFT.` subjects are the host's own control subjects")
    } else {
        None
    }
}

/// Whether the host or a component may send a reply to `reply_to`: any subject but a
/// reserved one, except that inboxes are what replies are for.
pub fn valid_reply_target(reply_to: &str) -> bool {
    valid_subject(reply_to) && (reply_to.starts_with(INBOX_PREFIX) || reserved(reply_to).is_none())
}

/// The prefix of a WebSocket connection's subject (`ws.conn.HOST.N`).
pub const WS_CONN_PREFIX: &str = "ws.conn.";

/// The prefix of a WebSocket group's subject (`ws.group.NAME`).
pub const WS_GROUP_PREFIX: &str = "ws.group.";

/// What may follow a connection's subject to control it (`ws.conn.HOST.N.join`, ...).
pub const WS_CONTROLS: [&str; 4] = ["join", "leave", "close", "binary"];

/// Whether `subject` is one of the controls of connection `reply_to` (the subject a
/// WebSocket event came with): what the handler of that event may always publish to.
pub fn is_connection_control(subject: &str, reply_to: &str) -> bool {
    reply_to.starts_with(WS_CONN_PREFIX)
        && subject
            .strip_prefix(reply_to)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|control| WS_CONTROLS.contains(&control))
}

/// Longest subject (or pattern) in bytes. NATS closes a connection whose control line
/// (`PUB subject reply size`) passes 4 KiB; a subject and a reply subject of this size
/// stay well under it.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Whether a token is usable: not empty, no whitespace or control characters (which end
/// a NATS protocol line).
fn valid_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `subject` is a valid subject to publish to: at most [`MAX_SUBJECT_BYTES`],
/// no wildcards, no empty tokens, no whitespace or control characters.
pub fn valid_subject(subject: &str) -> bool {
    subject.len() <= MAX_SUBJECT_BYTES
        && subject
            .split('.')
            .all(|t| valid_token(t) && t != "*" && t != ">")
}

/// Whether `pattern` is a valid subscription subject (`*` tokens, a final `>`), under the
/// same rules as [`valid_subject`] otherwise.
pub fn valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    pattern.len() <= MAX_SUBJECT_BYTES
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| valid_token(t) && (*t != ">" || i == tokens.len() - 1))
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
        assert!(!valid_subject("a\r\nPUB x 1"));
        assert!(!valid_subject("a\tb"));
        assert!(valid_subject(&"a".repeat(MAX_SUBJECT_BYTES)));
        assert!(!valid_subject(&"a".repeat(MAX_SUBJECT_BYTES + 1)));
        assert!(!valid_pattern(&format!(
            "{}.>",
            "a".repeat(MAX_SUBJECT_BYTES)
        )));
    }

    #[test]
    fn reserved_namespaces() {
        for subject in [
            "$JS.API.STREAM.DELETE.orders",
            "$KV.orders.k",
            "$O.files.x",
            "$SYS.REQ.SERVER.PING",
            "$G",
            "_INBOX.abc",
            "_WEFT.hosts",
        ] {
            assert!(reserved(subject).is_some(), "{subject}");
        }
        for subject in ["orders.created", "JS.API", "INBOX.x", "x.$KV", "_INBOXES.x"] {
            assert!(reserved(subject).is_none(), "{subject}");
        }
        assert!(valid_reply_target("_INBOX.abc.1"));
        assert!(valid_reply_target("orders.replies"));
        assert!(!valid_reply_target("$KV.orders.k"));
        assert!(!valid_reply_target("$JS.API.STREAM.DELETE.x"));
        assert!(!valid_reply_target("_WEFT.control"));
    }
}
