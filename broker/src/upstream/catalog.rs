//! Every callable name: the policy's HTTP tools, fixed at start, and what upstream MCP
//! servers publish — their tools, their prompts and their resources (`NAME.tool`,
//! `NAME.prompt`, `NAME.resources`; the server's own names with `prefix = false`) —
//! replaced whenever a server's lists change. The kinds share one namespace, so a grant
//! pattern covers a server's whole surface.
//!
//! A discovered tool, prompt or resource template whose definition changed since it was
//! pinned is *withheld*: neither listed nor usable until an approver accepts the new
//! definition. A name that two sources expose (a server without a prefix beside a policy
//! tool, or a server's tool and prompt of one name) is exposed by none of the discovered
//! ones, whatever order they were discovered in: a call must never reach a server other
//! than the one the policy's author meant.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::policy::{McpKind, Policy, ToolDef};

/// A discovered name and whether it is withheld.
#[derive(Clone)]
struct Discovered {
    tool: Arc<ToolDef>,
    /// Its pin's key (`server/tool/name`; empty for a server's resources, not pinned).
    pin: String,
    withheld: bool,
    /// Hash of the definition discovered (see `mcp::pins`).
    hash: String,
    /// What is listed for it besides name, description and schema (a prompt's upstream
    /// definition, its name replaced by the exposed one).
    listing: Option<Value>,
}

/// A resource template of a server, as listed, and whether it is withheld.
#[derive(Clone)]
struct Template {
    /// Its pin's name (`NAME.resources/<template name>`).
    pin: String,
    value: Value,
    withheld: bool,
    hash: String,
}

/// What one MCP server published.
#[derive(Default)]
pub struct Surface {
    names: Vec<Discovered>,
    templates: Vec<Template>,
    resources: Vec<Value>,
}

impl Surface {
    /// Adds a tool, prompt or `resources` name: whether it is withheld, its definition's
    /// hash, and what is listed for it besides its name (prompts); `pin` is its pin's
    /// key (empty for a server's resources, which are not pinned).
    pub fn add(
        &mut self,
        tool: Arc<ToolDef>,
        pin: String,
        withheld: bool,
        hash: String,
        listing: Option<Value>,
    ) {
        self.names.push(Discovered {
            tool,
            pin,
            withheld,
            hash,
            listing,
        });
    }

    /// Adds a resource template (the upstream's definition), pinned as `pin`.
    pub fn add_template(&mut self, pin: String, value: Value, withheld: bool, hash: String) {
        self.templates.push(Template {
            pin,
            value,
            withheld,
            hash,
        });
    }

    /// Adds a listed resource (the upstream's definition).
    pub fn add_resource(&mut self, value: Value) {
        self.resources.push(value);
    }
}

/// The catalog.
pub struct Catalog {
    http: BTreeMap<String, Arc<ToolDef>>,
    mcp: RwLock<Discoveries>,
    /// Bumped whenever what a server published changes (or a withheld name is
    /// released): connected MCP clients are told their lists changed.
    generation: tokio::sync::watch::Sender<u64>,
}

/// What the MCP servers published, per server, and the names exposed from it.
#[derive(Default)]
struct Discoveries {
    by_server: BTreeMap<String, Surface>,
    /// Each server's [`Surface::fingerprint`] when it was published.
    fingerprints: BTreeMap<String, String>,
    exposed: BTreeMap<String, Discovered>,
}

impl Surface {
    /// What a client would see change: each name's definition and whether it is
    /// withheld, each template's, each listed resource.
    fn fingerprint(&self) -> String {
        let mut text = String::new();
        for d in &self.names {
            text.push_str(&format!("{} {} {}\n", d.tool.name, d.hash, d.withheld));
        }
        for t in &self.templates {
            text.push_str(&format!("{} {} {}\n", t.pin, t.hash, t.withheld));
        }
        for r in &self.resources {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        text
    }
}

impl Discoveries {
    /// Recomputes the exposed names: each name published once, by one server, and not a
    /// policy tool's. Clashes are logged each time (they are a policy error).
    fn expose(&mut self, http: &BTreeMap<String, Arc<ToolDef>>) {
        let mut sources: BTreeMap<&str, Vec<(&str, &Discovered)>> = BTreeMap::new();
        for (server, surface) in &self.by_server {
            for discovered in &surface.names {
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
                    "a name is exposed twice (an MCP server without a prefix, or a server's \
                     tool and prompt of one name); none of the discovered ones is usable"
                );
                continue;
            }
            exposed.insert(name.to_string(), found[0].1.clone());
        }
        self.exposed = exposed;
    }
}

/// A lookup.
pub enum Lookup {
    /// Usable.
    Ready(Arc<ToolDef>),
    /// Known, but its changed definition waits for an approver.
    Withheld,
    /// No such name.
    Missing,
}

impl Catalog {
    /// A catalog with the policy's HTTP tools and no discovered names yet.
    pub fn new(policy: &Policy) -> Self {
        Catalog {
            http: policy.tools.clone(),
            mcp: RwLock::new(Discoveries::default()),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes as they happen (see [`Catalog::changed`]).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn changed(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Looks a name up (any kind).
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

    /// A usable name (any kind).
    pub fn get(&self, name: &str) -> Option<Arc<ToolDef>> {
        match self.lookup(name) {
            Lookup::Ready(tool) => Some(tool),
            _ => None,
        }
    }

    /// Every usable (not withheld) name, of every kind, sorted.
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

    /// The usable prompt named `name`, with what is listed for it.
    pub fn prompt(&self, name: &str) -> Option<(Arc<ToolDef>, Value)> {
        let found = self.mcp.read().ok()?;
        let d = found.exposed.get(name).filter(|d| !d.withheld)?;
        matches!(d.tool.mcp.as_ref()?.kind, McpKind::Prompt(_))
            .then(|| (d.tool.clone(), d.listing.clone().unwrap_or(Value::Null)))
    }

    /// The resource templates of `server` that are not withheld.
    pub fn templates_of(&self, server: &str) -> Vec<Value> {
        self.mcp.read().ok().map_or_else(Vec::new, |found| {
            found.by_server.get(server).map_or_else(Vec::new, |s| {
                s.templates
                    .iter()
                    .filter(|t| !t.withheld)
                    .map(|t| t.value.clone())
                    .collect()
            })
        })
    }

    /// The resources `server` listed when last asked.
    pub fn resources_of(&self, server: &str) -> Vec<Value> {
        self.mcp.read().ok().map_or_else(Vec::new, |found| {
            found
                .by_server
                .get(server)
                .map_or_else(Vec::new, |s| s.resources.clone())
        })
    }

    /// Whether `server` says it serves `uri`: a resource it listed has that URI, or the
    /// URI starts with the literal part of one of its templates (before the first `{`)
    /// that is not withheld.
    pub fn claims(&self, server: &str, uri: &str) -> bool {
        let Ok(found) = self.mcp.read() else {
            return false;
        };
        let Some(surface) = found.by_server.get(server) else {
            return false;
        };
        surface
            .resources
            .iter()
            .any(|r| r["uri"].as_str() == Some(uri))
            || surface.templates.iter().filter(|t| !t.withheld).any(|t| {
                t.value["uriTemplate"].as_str().is_some_and(|template| {
                    let literal = template.split('{').next().unwrap_or(template);
                    !literal.is_empty() && uri.starts_with(literal)
                })
            })
    }

    /// Replaces what one MCP server published.
    pub fn set_server(&self, server: &str, surface: Surface) {
        let mut changed = false;
        // Computed before the lock: lookups wait for nothing but the swap.
        let fingerprint = surface.fingerprint();
        if let Ok(mut found) = self.mcp.write() {
            changed = found.fingerprints.get(server) != Some(&fingerprint);
            found.fingerprints.insert(server.to_string(), fingerprint);
            found.by_server.insert(server.to_string(), surface);
            found.expose(&self.http);
        }
        if changed {
            self.changed();
        }
    }

    /// Releases a withheld name or template whose approved definition is `hash` — only
    /// if that is the definition currently discovered (a later change stays withheld).
    /// `name` is the pin's key (or, for an approval filed before pins had keys of their
    /// own, the exposed name).
    pub fn release(&self, name: &str, hash: &str) {
        if let Ok(mut found) = self.mcp.write() {
            let mut released = false;
            let mut template = false;
            let mut touched = Vec::new();
            for (server, surface) in &mut found.by_server {
                let before = (released, template);
                for d in &mut surface.names {
                    if (d.pin == name || d.tool.name == name) && d.hash == hash {
                        d.withheld = false;
                        released = true;
                    }
                }
                for t in &mut surface.templates {
                    if t.pin == name && t.hash == hash && t.withheld {
                        t.withheld = false;
                        template = true;
                    }
                }
                if (released, template) != before {
                    touched.push((server.clone(), surface.fingerprint()));
                }
            }
            // What clients were told of now: the next refresh of the same lists is no change.
            found.fingerprints.extend(touched);
            if released {
                found.expose(&self.http);
            }
            drop(found);
            if released || template {
                self.changed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{McpTarget, ToolApproval};

    fn surface(tools: Vec<(Arc<ToolDef>, bool, String)>) -> Surface {
        let mut surface = Surface::default();
        for (tool, withheld, hash) in tools {
            let pin = format!("{}/tool/{}", "test", tool.name);
            surface.add(tool, pin, withheld, hash, None);
        }
        surface
    }

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
            mcp: Some(McpTarget {
                server: server.into(),
                kind: McpKind::Tool(name.rsplit('.').next().unwrap().into()),
            }),
            upstream_auth: None,
        };
        (Arc::new(def), false, format!("hash-{server}"))
    }

    fn server_of(catalog: &Catalog, name: &str) -> Option<String> {
        catalog
            .get(name)
            .and_then(|t| t.mcp.clone())
            .map(|target| target.server)
    }

    /// A name two servers expose is callable on neither, in either order of discovery.
    /// (A policy allows one server without a prefix, and prefixed names carry their
    /// server's: this is the catalog's own rule, should two lists ever share a name.)
    #[test]
    fn a_name_two_servers_expose_reaches_neither() {
        for order in [["a", "b"], ["b", "a"]] {
            let catalog = Catalog::new(&crate::policy::Policy::default());
            for server in order {
                catalog.set_server(
                    server,
                    surface(vec![
                        tool("echo", server),
                        tool(&format!("{server}.only"), server),
                    ]),
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
        catalog.set_server(
            "s",
            surface(vec![tool("web.search", "s"), tool("other", "s")]),
        );
        assert!(catalog.get("web.search").unwrap().mcp.is_none());
        assert_eq!(server_of(&catalog, "other").as_deref(), Some("s"));
        assert_eq!(catalog.names(), ["other", "web.search"]);
    }

    /// Clients are told of a change only when what a server published changed.
    #[test]
    fn a_change_is_announced_once_and_a_refresh_without_one_is_not() {
        let catalog = Catalog::new(&crate::policy::Policy::default());
        let changes = catalog.changes();
        let seen = || *changes.borrow();
        catalog.set_server("s", surface(vec![tool("s.a", "s")]));
        assert_eq!(seen(), 1);
        catalog.set_server("s", surface(vec![tool("s.a", "s")]));
        assert_eq!(seen(), 1, "the same list again is no change");
        catalog.set_server("s", surface(vec![tool("s.a", "s"), tool("s.b", "s")]));
        assert_eq!(seen(), 2);
        let (def, _, hash) = tool("s.c", "s");
        catalog.set_server("s", surface(vec![(def, true, hash.clone())]));
        assert_eq!(seen(), 3);
        catalog.release("s.c", &hash);
        assert_eq!(seen(), 4, "a released definition is a change");
    }

    /// Releasing a withheld tool exposes it only with the approved definition.
    #[test]
    fn a_release_is_announced_once() {
        let catalog = Catalog::new(&crate::policy::Policy::default());
        let (def, _, hash) = tool("s.t", "s");
        catalog.set_server("s", surface(vec![(def.clone(), true, hash.clone())]));
        let changes = catalog.changes();
        let before = *changes.borrow();
        catalog.release("s.t", &hash);
        assert_eq!(*changes.borrow(), before + 1);
        // The next refresh finds it approved, as the release already announced.
        catalog.set_server("s", surface(vec![(def, false, hash)]));
        assert_eq!(*changes.borrow(), before + 1);
    }

    #[test]
    fn release_needs_the_definition_discovered() {
        let catalog = Catalog::new(&crate::policy::Policy::default());
        let (def, _, hash) = tool("s.t", "s");
        catalog.set_server("s", surface(vec![(def, true, hash.clone())]));
        assert!(matches!(catalog.lookup("s.t"), Lookup::Withheld));
        catalog.release("s.t", "another-hash");
        assert!(matches!(catalog.lookup("s.t"), Lookup::Withheld));
        catalog.release("s.t", &hash);
        assert!(matches!(catalog.lookup("s.t"), Lookup::Ready(_)));
    }
}
