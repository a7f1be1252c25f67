//! Property tests of the parsers and matchers that take untrusted input (manifests,
//! spec JSON from the admin API, route patterns, subjects, key-value keys), run with
//! fixed seeds so every `cargo test` tries the same inputs and a failure reproduces.
//! Inputs are random strings over alphabets heavy in the characters each parser treats
//! specially, and random byte-level mutations of valid documents. Any crash found is
//! kept below as a regression case.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kv::nats::{decode_key, encode_key};
use crate::spec::ComponentSpec;
use crate::spec::manifest::Manifest;
use crate::spec::route::Pattern;
use crate::spec::subject::{
    MAX_SUBJECT_BYTES, reserved, subject_matches, valid_pattern, valid_reply_target, valid_subject,
};

/// Cases per property: enough to find what the regression cases below were, quick in a
/// debug build (all properties together take well under a second).
const CASES: usize = 5_000;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A string of up to `max` characters, each picked from `alphabet` or, now and then,
/// any Unicode scalar value.
fn string(rng: &mut StdRng, alphabet: &[char], max: usize) -> String {
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| {
            if rng.gen_ratio(1, 20) {
                rng.r#gen::<char>()
            } else {
                alphabet[rng.gen_range(0..alphabet.len())]
            }
        })
        .collect()
}

/// `text` with a few random edits: bytes deleted, duplicated, replaced by one of
/// `specials`, or a slice moved elsewhere; cut back to valid UTF-8.
fn mutate(rng: &mut StdRng, text: &str, specials: &[u8]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..4) {
            0 => {
                let end = (at + rng.gen_range(1..=8)).min(bytes.len());
                bytes.drain(at..end);
            }
            1 => bytes.insert(at, bytes[at]),
            2 => bytes[at] = specials[rng.gen_range(0..specials.len())],
            _ => {
                let end = (at + rng.gen_range(1..=16)).min(bytes.len());
                let piece: Vec<u8> = bytes[at..end].to_vec();
                let to = rng.gen_range(0..=bytes.len());
                bytes.splice(to..to, piece);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

const SUBJECT_CHARS: &[char] = &[
    'a', 'b', '.', '.', '*', '>', '$', '_', ' ', '\t', '\r', '\n', '\0', 'é',
];

#[test]
fn subjects_validate_and_match_consistently() {
    let mut rng = rng(1);
    for _ in 0..CASES {
        let s = string(&mut rng, SUBJECT_CHARS, 12);
        let p = string(&mut rng, SUBJECT_CHARS, 12);
        let matched = subject_matches(&p, &s);
        if valid_subject(&s) {
            assert!(s.len() <= MAX_SUBJECT_BYTES);
            assert!(
                !s.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{s:?}"
            );
            assert!(valid_pattern(&s), "a subject is a pattern too: {s:?}");
            assert!(subject_matches(&s, &s), "a subject matches itself: {s:?}");
            assert!(subject_matches(">", &s), "`>` matches every subject: {s:?}");
            if valid_reply_target(&s) && !s.starts_with("_INBOX.") {
                assert!(reserved(&s).is_none(), "{s:?}");
            }
        } else {
            assert!(!valid_reply_target(&s), "{s:?}");
        }
        if matched && valid_pattern(&p) && valid_subject(&s) {
            // A match never crosses a token count the pattern cannot cover.
            let (pt, st) = (p.split('.').count(), s.split('.').count());
            assert!(st == pt || (p.ends_with('>') && st >= pt), "{p:?} {s:?}");
        }
    }
    let long = "a.".repeat(MAX_SUBJECT_BYTES / 2) + "a";
    assert!(!valid_subject(&long) && !valid_pattern(&long));
}

#[test]
fn route_patterns_parse_without_panicking_and_match_their_own_paths() {
    let alphabet = &['/', '/', 'a', 'b', ':', '.', '.', '.', '%', ' ', 'é'];
    let mut rng = rng(2);
    for _ in 0..CASES {
        let text = string(&mut rng, alphabet, 16);
        let Ok(pattern) = Pattern::parse(&text) else {
            continue;
        };
        // The path made of the pattern's own segments (a value for each parameter)
        // matches it, and the pattern is as specific as itself.
        let concrete: Vec<String> = text
            .trim_start_matches('/')
            .trim_end_matches("...")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with(':') {
                    "v".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        let parts: Vec<&str> = concrete.iter().map(String::as_str).collect();
        assert!(pattern.matches(&parts), "{text:?} should match {parts:?}");
        assert!(pattern.same_shape(&pattern));
        assert_eq!(pattern.specificity(&pattern), std::cmp::Ordering::Equal);
        if text.ends_with("...") {
            let mut deeper = parts.clone();
            deeper.push("more");
            assert!(pattern.matches(&deeper), "{text:?} matches below it");
        }
    }
}

#[test]
fn key_escaping_round_trips_and_always_makes_a_valid_subject() {
    let alphabet = &[
        'a', 'Z', '0', '.', '.', '=', '-', '_', '/', ' ', '*', '>', '$', 'é', '\0',
    ];
    let mut rng = rng(3);
    let regressions = ["a..b", "..", ".", "a.", ".a", "=2E", "a...b"];
    let random = (0..CASES).map(|_| string(&mut rng, alphabet, 24));
    for key in regressions.iter().map(|k| k.to_string()).chain(random) {
        let encoded = encode_key(&key);
        assert_eq!(
            decode_key(&encoded),
            key,
            "round trip of {key:?} via {encoded:?}"
        );
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "{encoded:?}"
        );
        if !key.is_empty() {
            let subject = format!("$KV.bucket.{encoded}");
            assert!(valid_subject(&subject), "{key:?} -> {subject:?}");
        }
    }
    // The longest key the capability takes (512 bytes), escaped byte by byte, makes a
    // subject that keeps the protocol line (`PUB subject inbox size`) far under the
    // server's 4 KiB limit, which would close the shared connection.
    let worst = format!(
        "$KV.{}.{}",
        "b".repeat(64),
        encode_key(&"\u{7f}".repeat(512))
    );
    assert!(
        worst.len() < 2048 && worst.split('.').all(|t| !t.is_empty()),
        "{worst}"
    );
}

const MANIFEST: &str = r#"name = "shop"
nats_url = "nats://127.0.0.1:4222"

[components.orders]
source = "orders.wasm"
routes = [{ path = "/orders/...", methods = ["GET", "POST"] }, { path = "/orders/:id" }]
allowed_outbound_hosts = ["https://api.example.com"]
subscriptions = [{ subject = "shop.orders.>", max_in_flight = 8 }]
allowed_publish = ["shop.events.>"]
buckets = ["orders"]
config = { greeting = "hi" }

[components.orders.limits]
timeout_ms = 1000
memory_mb = 64

[components.inventory]
source = "inventory.wasm"
routes = [{ path = "/inventory/:sku" }]
"#;

#[test]
fn mutated_manifests_are_refused_with_a_position_never_a_panic() {
    let path = std::path::Path::new("/tmp/weft-property/weft.toml");
    assert!(
        Manifest::parse(path, MANIFEST).is_ok(),
        "the seed manifest is valid"
    );
    let mut rng = rng(4);
    let specials = b"[]{}=\",.:/*>$\n#'\\0x\xff";
    for _ in 0..CASES {
        let text = mutate(&mut rng, MANIFEST, specials);
        if let Err(e) = Manifest::parse(path, &text) {
            let message = e.to_string();
            assert!(message.contains("weft.toml"), "names the file: {message}");
        }
    }
}

#[test]
fn mutated_spec_json_is_refused_or_validated_never_a_panic() {
    let spec = Manifest::parse(std::path::Path::new("weft.toml"), MANIFEST)
        .unwrap()
        .components
        .remove(0)
        .spec
        .into_inner();
    let json = serde_json::to_string(&spec).unwrap();
    let mut rng = rng(5);
    let specials = b"[]{}:,\"\\0-1e9.*>$/";
    for _ in 0..CASES {
        let text = mutate(&mut rng, &json, specials);
        let Ok(spec) = serde_json::from_str::<ComponentSpec>(&text) else {
            continue;
        };
        // What validates survives the trip through JSON (the admin client's side) as is.
        if let Ok(valid) = spec.validate() {
            let again: ComponentSpec =
                serde_json::from_str(&serde_json::to_string(&*valid).unwrap()).unwrap();
            assert_eq!(again.validate().unwrap(), valid, "{text}");
        }
    }
}
