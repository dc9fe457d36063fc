//! Every callable tool: the policy's HTTP tools, fixed at start, and the tools discovered
//! on upstream MCP servers (`NAME.tool`), replaced whenever a server's list changes.
//!
//! A discovered tool whose definition changed since it was pinned is *withheld*: it is
//! neither listed nor callable until an approver accepts the new definition.

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
    mcp: RwLock<BTreeMap<String, Discovered>>,
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
            mcp: RwLock::new(BTreeMap::new()),
        }
    }

    /// Looks a tool up.
    pub fn lookup(&self, name: &str) -> Lookup {
        if let Some(tool) = self.http.get(name) {
            return Lookup::Ready(tool.clone());
        }
        match self.mcp.read().ok().and_then(|map| map.get(name).cloned()) {
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
        if let Ok(map) = self.mcp.read() {
            names.extend(
                map.iter()
                    .filter(|(_, d)| !d.withheld)
                    .map(|(n, _)| n.clone()),
            );
        }
        names.sort();
        names
    }

    /// Replaces the tools of one MCP server: `(tool, withheld, definition hash)` each.
    pub fn set_server_tools(&self, server: &str, tools: Vec<(Arc<ToolDef>, bool, String)>) {
        let prefix = format!("{server}.");
        if let Ok(mut map) = self.mcp.write() {
            map.retain(|name, _| !name.starts_with(&prefix));
            for (tool, withheld, hash) in tools {
                map.insert(
                    tool.name.clone(),
                    Discovered {
                        tool,
                        withheld,
                        hash,
                    },
                );
            }
        }
    }

    /// Releases a withheld tool whose approved definition is `hash` — only if that is the
    /// definition currently discovered (a later change stays withheld).
    pub fn release(&self, name: &str, hash: &str) {
        if let Ok(mut map) = self.mcp.write()
            && let Some(d) = map.get_mut(name)
            && d.hash == hash
        {
            d.withheld = false;
        }
    }
}
