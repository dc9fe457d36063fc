//! Every callable tool: the policy's HTTP tools, fixed at start, and the tools discovered
//! on upstream MCP servers (`NAME.tool`, or the server's own names with `prefix = false`),
//! replaced whenever a server's list changes.
//!
//! A discovered tool whose definition changed since it was pinned is *withheld*: it is
//! neither listed nor callable until an approver accepts the new definition. A name that
//! two sources expose (a server without a prefix beside a policy tool or another server)
//! is exposed by none of the discovered ones, whatever order they were discovered in: a
//! call must never reach a server other than the one the policy's author meant.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::policy::{Policy, ToolDef};

/// A discovered tool and whether it is withheld.
#[derive(Clone)]
struct Discovered {
    tool: Arc<ToolDef>,
    withheld: bool,
    /// Hash of the definition discovered (see `mcp::pins`).
    hash: String,
}

/// The catalog.
pub struct Catalog {
    http: BTreeMap<String, Arc<ToolDef>>,
    mcp: RwLock<Discoveries>,
}

/// What the MCP servers published, per server, and the names exposed from it.
#[derive(Default)]
struct Discoveries {
    by_server: BTreeMap<String, Vec<Discovered>>,
    exposed: BTreeMap<String, Discovered>,
}

impl Discoveries {
    /// Recomputes the exposed names: each name published once, by one server, and not a
    /// policy tool's. Clashes are logged each time (they are a policy error).
    fn expose(&mut self, http: &BTreeMap<String, Arc<ToolDef>>) {
        let mut sources: BTreeMap<&str, Vec<(&str, &Discovered)>> = BTreeMap::new();
        for (server, tools) in &self.by_server {
            for discovered in tools {
                sources
                    .entry(discovered.tool.name.as_str())
                    .or_default()
                    .push((server, discovered));
            }
        }
        let mut exposed = BTreeMap::new();
        for (name, found) in sources {
            let servers: Vec<&str> = found.iter().map(|(server, _)| *server).collect();
            if http.contains_key(name) || found.len() > 1 {
                tracing::error!(
                    tool = name,
                    servers = ?servers,
                    policy_tool = http.contains_key(name),
                    "a tool name is exposed twice (an MCP server without a prefix); \
                     neither discovered tool is callable: give the server a prefix"
                );
                continue;
            }
            exposed.insert(name.to_string(), found[0].1.clone());
        }
        self.exposed = exposed;
    }
}

/// A tool lookup.
pub enum Lookup {
    /// Callable.
    Ready(Arc<ToolDef>),
    /// Known, but its changed definition waits for an approver.
    Withheld,
    /// No such tool.
    Missing,
}

impl Catalog {
    /// A catalog with the policy's HTTP tools and no discovered tools yet.
    pub fn new(policy: &Policy) -> Self {
        Catalog {
            http: policy.tools.clone(),
            mcp: RwLock::new(Discoveries::default()),
        }
    }

    /// Looks a tool up.
    pub fn lookup(&self, name: &str) -> Lookup {
        if let Some(tool) = self.http.get(name) {
            return Lookup::Ready(tool.clone());
        }
        match self
            .mcp
            .read()
            .ok()
            .and_then(|found| found.exposed.get(name).cloned())
        {
            Some(d) if d.withheld => Lookup::Withheld,
            Some(d) => Lookup::Ready(d.tool),
            None => Lookup::Missing,
        }
    }

    /// A callable tool by name.
    pub fn get(&self, name: &str) -> Option<Arc<ToolDef>> {
        match self.lookup(name) {
            Lookup::Ready(tool) => Some(tool),
            _ => None,
        }
    }

    /// Names of every callable (not withheld) tool, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.http.keys().cloned().collect();
        if let Ok(found) = self.mcp.read() {
            names.extend(
                found
                    .exposed
                    .iter()
                    .filter(|(_, d)| !d.withheld)
                    .map(|(n, _)| n.clone()),
            );
        }
        names.sort();
        names
    }

    /// Replaces the tools of one MCP server: `(tool, withheld, definition hash)` each.
    pub fn set_server_tools(&self, server: &str, tools: Vec<(Arc<ToolDef>, bool, String)>) {
        if let Ok(mut found) = self.mcp.write() {
            let published = tools
                .into_iter()
                .map(|(tool, withheld, hash)| Discovered {
                    tool,
                    withheld,
                    hash,
                })
                .collect();
            found.by_server.insert(server.to_string(), published);
            found.expose(&self.http);
        }
    }

    /// Releases a withheld tool whose approved definition is `hash` — only if that is the
    /// definition currently discovered (a later change stays withheld).
    pub fn release(&self, name: &str, hash: &str) {
        if let Ok(mut found) = self.mcp.write() {
            let mut released = false;
            for d in found.by_server.values_mut().flatten() {
                if d.tool.name == name && d.hash == hash {
                    d.withheld = false;
                    released = true;
                }
            }
            if released {
                found.expose(&self.http);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ToolApproval;

    fn tool(name: &str, server: &str) -> (Arc<ToolDef>, bool, String) {
        let schema = serde_json::json!({"type": "object"});
        let def = ToolDef {
            name: name.into(),
            description: format!("{name} on {server}"),
            upstream: reqwest::Url::parse("http://127.0.0.1:9/mcp").unwrap(),
            timeout: std::time::Duration::from_secs(1),
            approval: ToolApproval::None,
            validator: crate::policy::input_schema::compile(&schema).unwrap(),
            input_schema: schema,
            upstream_headers: Vec::new(),
            mcp: Some((server.into(), name.rsplit('.').next().unwrap().into())),
            upstream_auth: None,
        };
        (Arc::new(def), false, format!("hash-{server}"))
    }

    fn server_of(catalog: &Catalog, name: &str) -> Option<String> {
        catalog
            .get(name)
            .and_then(|t| t.mcp.clone())
            .map(|(s, _)| s)
    }

    /// A name two servers expose is callable on neither, in either order of discovery.
    /// (A policy allows one server without a prefix, and prefixed names carry their
    /// server's: this is the catalog's own rule, should two lists ever share a name.)
    #[test]
    fn a_name_two_servers_expose_reaches_neither() {
        for order in [["a", "b"], ["b", "a"]] {
            let catalog = Catalog::new(&crate::policy::Policy::default());
            for server in order {
                catalog.set_server_tools(
                    server,
                    vec![
                        tool("echo", server),
                        tool(&format!("{server}.only"), server),
                    ],
                );
            }
            assert!(
                matches!(catalog.lookup("echo"), Lookup::Missing),
                "{order:?}"
            );
            assert!(!catalog.names().contains(&"echo".to_string()));
            assert_eq!(server_of(&catalog, "a.only").as_deref(), Some("a"));
            assert_eq!(server_of(&catalog, "b.only").as_deref(), Some("b"));
        }
    }

    /// A policy tool keeps its name: a discovered tool of the same name is not exposed.
    #[test]
    fn a_policy_tool_is_never_shadowed_by_a_discovered_one() {
        let mut policy = crate::policy::Policy::default();
        let (mut mine, _, _) = tool("web.search", "none");
        Arc::get_mut(&mut mine).unwrap().mcp = None;
        policy.tools.insert("web.search".into(), mine);
        let catalog = Catalog::new(&policy);
        catalog.set_server_tools("s", vec![tool("web.search", "s"), tool("other", "s")]);
        assert!(catalog.get("web.search").unwrap().mcp.is_none());
        assert_eq!(server_of(&catalog, "other").as_deref(), Some("s"));
        assert_eq!(catalog.names(), ["other", "web.search"]);
    }

    /// Releasing a withheld tool exposes it only with the approved definition.
    #[test]
    fn release_needs_the_definition_discovered() {
        let catalog = Catalog::new(&crate::policy::Policy::default());
        let (def, _, hash) = tool("s.t", "s");
        catalog.set_server_tools("s", vec![(def, true, hash.clone())]);
        assert!(matches!(catalog.lookup("s.t"), Lookup::Withheld));
        catalog.release("s.t", "another-hash");
        assert!(matches!(catalog.lookup("s.t"), Lookup::Withheld));
        catalog.release("s.t", &hash);
        assert!(matches!(catalog.lookup("s.t"), Lookup::Ready(_)));
    }
}
