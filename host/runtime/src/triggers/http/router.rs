//! HTTP flow, step 2: which deployment serves a request path. The most specific
//! route wins (patterns: `spec::route`).

use std::cmp::Ordering;
use std::sync::Arc;

use http::Method;

use crate::deployment::Deployment;
use crate::spec::route::Pattern;

/// One entry of the table.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path as written in the spec.
    pub path: String,
    pattern: Pattern,
    /// Empty: any method.
    methods: Vec<Method>,
    /// Who serves it.
    pub deployment: Arc<Deployment>,
    /// Whether it takes WebSocket upgrades.
    pub websocket: bool,
}

/// What routing a request found.
#[derive(Debug)]
pub enum Routed<'a> {
    /// Serve it with this route.
    Found(&'a Route),
    /// Some route matches the path, none the method; these methods would.
    MethodNotAllowed(Vec<Method>),
    /// No route matches the path.
    NotFound,
}

/// All routes of all deployments. Immutable: a deploy builds a new table and swaps it in.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table for a set of deployments; they must not conflict.
    pub fn build<'a>(deployments: impl IntoIterator<Item = &'a Arc<Deployment>>) -> RouteTable {
        let mut routes = Vec::new();
        for deployment in deployments {
            for spec in &deployment.spec.routes {
                // Specs are validated before they are deployed.
                let Ok(pattern) = Pattern::parse(&spec.path) else {
                    continue;
                };
                let methods = spec.methods.iter().filter_map(|m| m.parse().ok()).collect();
                routes.push(Route {
                    path: spec.path.clone(),
                    pattern,
                    methods,
                    deployment: deployment.clone(),
                    websocket: spec.websocket,
                });
            }
        }
        RouteTable { routes }
    }

    /// Finds the most specific route for `method` and `path` (without the query).
    pub fn lookup(&self, method: &Method, path: &str) -> Routed<'_> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut best: Option<&Route> = None;
        let mut allowed = Vec::new();
        for route in self.routes.iter().filter(|r| r.pattern.matches(&parts)) {
            if !route.methods.is_empty() && !route.methods.contains(method) {
                allowed.extend(route.methods.iter().cloned());
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => match route.pattern.specificity(&b.pattern) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    // Same shape: a route naming the method beats one taking any method.
                    Ordering::Equal => !route.methods.is_empty() && b.methods.is_empty(),
                },
            };
            if better {
                best = Some(route);
            }
        }
        match best {
            Some(route) => Routed::Found(route),
            None if !allowed.is_empty() => Routed::MethodNotAllowed(allowed),
            None => Routed::NotFound,
        }
    }

    /// The routes, for listings.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
