//! `weft.toml`: the application manifest read by `weft up`.
//! Parsed strictly; every error names the file, line, column and key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::spec::{ComponentSpec, ValidSpec, validate_name};
use crate::tls::TlsFiles;

/// A parsed and validated manifest.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// The application's name.
    pub name: String,
    /// The NATS server to use when `--nats` is not given; `None`: the embedded bus.
    pub nats_url: Option<String>,
    /// `[tls]`: the HTTP listener's certificate and key, when `--tls-cert` is not given.
    pub tls: Option<TlsFiles>,
    /// Components in the order they appear by name.
    pub components: Vec<ComponentEntry>,
}

/// One `[components.NAME]` entry.
#[derive(Debug, Clone)]
pub struct ComponentEntry {
    /// The component's name (the table key).
    pub name: String,
    /// Path of the `.wasm`, resolved against the manifest's directory.
    pub source: PathBuf,
    /// How to build the `.wasm`, if the manifest says.
    pub build: Option<BuildSpec>,
    /// Routes, limits, grants and config, validated.
    pub spec: ValidSpec,
}

/// `[components.NAME.build]`: a shell command and the inputs that make it stale.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Run with `sh -c` in `workdir`.
    pub command: String,
    /// Directory to run in, relative to the manifest (default: the manifest's directory).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Files or directories whose change makes the `.wasm` stale (relative to the manifest).
    #[serde(default)]
    pub sources: Vec<PathBuf>,
}

/// A manifest that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid, with the position of the problem.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The manifest's path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    nats_url: Option<String>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    components: BTreeMap<String, RawComponent>,
}

/// `[tls]`: PEM files, relative to the manifest.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: PathBuf,
    #[serde(default)]
    build: Option<BuildSpec>,
    // The ComponentSpec fields, listed here because serde's `flatten` cannot be combined
    // with `deny_unknown_fields`.
    #[serde(default)]
    routes: Vec<super::RouteSpec>,
    #[serde(default)]
    limits: super::Limits,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    subscriptions: Vec<super::SubscriptionSpec>,
    #[serde(default)]
    schedules: Vec<super::schedule::ScheduleSpec>,
    #[serde(default)]
    allowed_publish: Vec<String>,
    #[serde(default)]
    buckets: Vec<String>,
    #[serde(default)]
    websocket_origins: Vec<String>,
    #[serde(default)]
    placement: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// Parses manifest `text`; `path` is used for error messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ManifestError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), e.message().to_string()))?;
        let raw: RawManifest = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = match key.as_str() {
                "" | "." => inner.message().to_string(),
                _ => format!("`{key}`: {}", inner.message()),
            };
            invalid(inner.span(), message)
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut components = Vec::new();
        for (name, entry) in raw.components {
            // Semantic errors point at the key they are about.
            let at_key = |key: &str, message: String| {
                let path = format!("components.{name}.{key}");
                let span = key_span(text, &path);
                invalid(span, format!("`{path}`: {message}"))
            };
            let spec = ComponentSpec {
                routes: entry.routes,
                limits: entry.limits,
                config: entry.config,
                allowed_outbound_hosts: entry.allowed_outbound_hosts,
                subscriptions: entry.subscriptions,
                allowed_publish: entry.allowed_publish,
                buckets: entry.buckets,
                websocket_origins: entry.websocket_origins,
                schedules: entry.schedules,
                placement: entry.placement,
            };
            validate_name(&name).map_err(|e| {
                let span = key_span(text, &format!("components.{name}"));
                invalid(span, e.message)
            })?;
            let spec = spec.validate().map_err(|e| at_key(&e.key, e.message))?;
            components.push(ComponentEntry {
                name,
                source: base.join(entry.source),
                build: entry.build.map(|b| BuildSpec {
                    workdir: Some(base.join(b.workdir.unwrap_or_default())),
                    sources: b.sources.iter().map(|s| base.join(s)).collect(),
                    command: b.command,
                }),
                spec,
            });
        }
        let manifest = Manifest {
            name: raw.name,
            nats_url: raw.nats_url,
            tls: raw.tls.map(|tls| TlsFiles {
                cert: base.join(tls.cert),
                key: base.join(tls.key),
            }),
            components,
        };
        let specs: Vec<(&str, &ComponentSpec)> = manifest
            .components
            .iter()
            .map(|c| (c.name.as_str(), &*c.spec))
            .collect();
        super::route::check_conflicts(&specs).map_err(|m| invalid(None, m))?;
        Ok(manifest)
    }
}

/// Where the value of `path` (`components.a.routes[0].path`) is written in `text`, or
/// the deepest part of it that is; `None` if not even the first key is there.
fn key_span(text: &str, path: &str) -> Option<Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut found = None;
    let mut current = Some(root.get_ref());
    for part in path.split('.') {
        let (key, indices) = match part.split_once('[') {
            Some((key, rest)) => (key, Some(rest)),
            None => (part, None),
        };
        let table = current.take()?;
        let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        found = Some(value.span());
        let mut value = value.get_ref();
        for index in indices.into_iter().flat_map(|r| r.split('[')) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            let DeValue::Array(items) = value else {
                return found;
            };
            let item = items.get(index)?;
            found = Some(item.span());
            value = item.get_ref();
        }
        current = match value {
            DeValue::Table(table) => Some(table),
            _ => None,
        };
    }
    found
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("app/weft.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_full_entry() {
        let m = parse(
            r#"
name = "shop"
[components.hello]
source = "hello.wasm"
routes = [{ path = "/hello/...", methods = ["GET"] }]
config = { greeting = "hi" }
allowed_outbound_hosts = ["http://example.com:8080"]
limits = { timeout_ms = 500 }
build = { command = "make", sources = ["src"] }
"#,
        )
        .unwrap();
        let c = &m.components[0];
        assert_eq!(c.name, "hello");
        assert_eq!(c.source, Path::new("app/hello.wasm"));
        assert_eq!(c.spec.limits.timeout_ms, 500);
        assert_eq!(c.spec.limits.memory_mb, 128, "unnamed limits keep defaults");
        assert_eq!(
            c.build.as_ref().unwrap().sources,
            vec![PathBuf::from("app/src")]
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err =
            parse("name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nsorce = 1\n").unwrap_err();
        assert!(
            err.starts_with("app/weft.toml:4:1: `components.a.sorce`: unknown field `sorce`"),
            "{err}"
        );
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn wrong_type_is_positioned() {
        let err = parse("name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nlimits = { timeout_ms = \"soon\" }\n")
            .unwrap_err();
        assert!(
            err.starts_with("app/weft.toml:4:25: `components.a.limits.timeout_ms`: invalid type"),
            "{err}"
        );
        assert!(err.contains("expected u64"), "{err}");
    }

    #[test]
    fn bad_route_points_at_its_key() {
        let err = parse(
            "name = \"x\"\n\n[components.a]\nsource = \"a.wasm\"\nroutes = [{ path = \"x\" }]\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("app/weft.toml:5:20: `components.a.routes[0].path`: route `x`"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_point_at_their_keys() {
        let err = parse(
            "name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nallowed_publish = [\"ok\", \"a..b\"]\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("app/weft.toml:4:26: `components.a.allowed_publish[1]`"),
            "{err}"
        );
        let err = parse(
            "name = \"x\"\n[components.a]\nsource = \"a.wasm\"\n[components.a.limits]\ntimeout_ms = 0\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "app/weft.toml:5:14: `components.a.limits.timeout_ms`: must be at least 1"
            ),
            "{err}"
        );
    }

    #[test]
    fn conflicting_routes_name_both_components() {
        let err = parse(
            "name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nroutes = [{ path = \"/p/:id\" }]\n\
             [components.b]\nsource = \"b.wasm\"\nroutes = [{ path = \"/p/:name\" }]\n",
        )
        .unwrap_err();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
    }
}
