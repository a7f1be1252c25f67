//! Route path patterns: `/exact`, `/users/:id` and `/static/...`, how they match a path
//! and which of two is more specific. Plain data, used by spec validation and the router.

use std::cmp::Ordering;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    /// Ends in `/...`: matches the prefix itself and anything below it.
    wildcard: bool,
}

impl Pattern {
    /// Parses `/a/:b/...`; explains what is wrong otherwise.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        let rest = path
            .strip_prefix('/')
            .ok_or("a route must start with `/`")?;
        let (rest, wildcard) = match rest.strip_suffix("...") {
            Some(prefix) if prefix.is_empty() || prefix.ends_with('/') => {
                (prefix.trim_end_matches('/'), true)
            }
            Some(_) => return Err("`...` is only allowed as the whole last segment".into()),
            None => (rest, false),
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('/') {
                if part.is_empty() {
                    return Err("empty path segment (`//` or a trailing `/`)".into());
                }
                if part.contains("...") {
                    return Err("`...` is only allowed as the whole last segment".into());
                }
                match part.strip_prefix(':') {
                    Some("") => return Err("`:` must be followed by a parameter name".into()),
                    Some(name) => segments.push(Segment::Param(name.to_string())),
                    None => segments.push(Segment::Literal(part.to_string())),
                }
            }
        }
        Ok(Pattern { segments, wildcard })
    }

    /// Whether the pattern matches a path split into its non-empty segments.
    pub fn matches(&self, path: &[&str]) -> bool {
        if path.len() < self.segments.len() || (!self.wildcard && path.len() != self.segments.len())
        {
            return false;
        }
        self.segments.iter().zip(path).all(|(seg, part)| match seg {
            Segment::Literal(lit) => lit == part,
            Segment::Param(_) => true,
        })
    }

    /// Orders two patterns that both match a path: literal beats parameter beats
    /// wildcard, segment by segment; `Greater` means `self` is more specific.
    pub fn specificity(&self, other: &Pattern) -> Ordering {
        let rank = |p: &Pattern, i: usize| match p.segments.get(i) {
            Some(Segment::Literal(_)) => 2,
            Some(Segment::Param(_)) => 1,
            None => 0,
        };
        let len = self.segments.len().max(other.segments.len());
        (0..len)
            .map(|i| rank(self, i).cmp(&rank(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| other.wildcard.cmp(&self.wildcard))
    }

    /// Two patterns with the same shape match exactly the same paths.
    pub fn same_shape(&self, other: &Pattern) -> bool {
        self.wildcard == other.wildcard
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }
}

/// Rejects routes of different components that would match the same requests.
pub fn check_conflicts(specs: &[(&str, &super::ComponentSpec)]) -> Result<(), String> {
    let mut seen: Vec<(&str, &str, Pattern, &[String])> = Vec::new();
    for (name, spec) in specs {
        for route in &spec.routes {
            let pattern =
                Pattern::parse(&route.path).map_err(|e| format!("route `{}`: {e}", route.path))?;
            for (other_name, other_path, other, other_methods) in &seen {
                let methods_overlap = route.methods.is_empty()
                    || other_methods.is_empty()
                    || route.methods.iter().any(|m| other_methods.contains(m));
                if pattern.same_shape(other) && methods_overlap {
                    return Err(format!(
                        "route `{}` of component `{name}` conflicts with route `{other_path}` of component `{other_name}`",
                        route.path
                    ));
                }
            }
            seen.push((name, &route.path, pattern, &route.methods));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick<'a>(patterns: &'a [&'a str], path: &str) -> Option<&'a str> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let parsed: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        let mut best: Option<usize> = None;
        for (i, p) in parsed.iter().enumerate().filter(|(_, p)| p.matches(&parts)) {
            if best.is_none_or(|b| p.specificity(&parsed[b]) == Ordering::Greater) {
                best = Some(i);
            }
        }
        best.map(|i| patterns[i])
    }

    #[test]
    fn most_specific_wins() {
        let ps = [
            "/...",
            "/users/...",
            "/users/:id",
            "/users/me",
            "/users/:id/posts",
        ];
        assert_eq!(pick(&ps, "/users/me"), Some("/users/me"));
        assert_eq!(pick(&ps, "/users/42"), Some("/users/:id"));
        assert_eq!(pick(&ps, "/users/42/posts"), Some("/users/:id/posts"));
        assert_eq!(pick(&ps, "/users/42/likes"), Some("/users/..."));
        assert_eq!(pick(&ps, "/users"), Some("/users/..."));
        assert_eq!(pick(&ps, "/other"), Some("/..."));
        assert_eq!(pick(&ps, "/"), Some("/..."));
        assert_eq!(pick(&["/a"], "/a/b"), None);
        assert_eq!(pick(&["/a/:x"], "/a"), None);
    }

    #[test]
    fn parse_errors() {
        assert!(Pattern::parse("a").is_err());
        assert!(Pattern::parse("/a//b").is_err());
        assert!(Pattern::parse("/a...").is_err());
        assert!(Pattern::parse("/a/.../b").is_err());
        assert!(Pattern::parse("/:").is_err());
        assert!(Pattern::parse("/").is_ok());
        assert!(Pattern::parse("/...").is_ok());
    }

    #[test]
    fn conflicts_need_same_shape_and_overlapping_methods() {
        let spec = |path: &str, methods: &[&str]| crate::spec::ComponentSpec {
            routes: vec![crate::spec::RouteSpec {
                path: path.into(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
                websocket: false,
            }],
            ..Default::default()
        };
        let (a, b) = (spec("/x/:id", &[]), spec("/x/:other", &["GET"]));
        assert!(check_conflicts(&[("a", &a), ("b", &b)]).is_err());
        let (a, b) = (spec("/x/:id", &["POST"]), spec("/x/:other", &["GET"]));
        assert!(check_conflicts(&[("a", &a), ("b", &b)]).is_ok());
        let (a, b) = (spec("/x/...", &[]), spec("/x/:id", &[]));
        assert!(check_conflicts(&[("a", &a), ("b", &b)]).is_ok());
    }
}
