//! The filter pipeline: small checks a node must pass to take a task, each able to say why it
//! turned a node away, so that a pending task can tell the user.
//!
//! ```text
//!   ready ─▶ resources ─▶ constraints ─▶ max-replicas      (Swarm's order)
//! ```
//!
//! A node refused by several filters counts under the first one only.

use std::collections::{BTreeMap, HashMap};

use proto::spec::TaskSpec;

use super::constraint::{self, Constraint, ConstraintError};
use crate::store::{Availability, Node, NodeState};

/// What a group of identical tasks (same service, same spec) asks of a node.
#[derive(Clone, Debug)]
pub struct Requirements<'a> {
    pub service_id: &'a str,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub constraints: Result<Vec<Constraint>, ConstraintError>,
    /// 0: unlimited.
    pub max_replicas: u64,
}

impl<'a> Requirements<'a> {
    pub fn new(service_id: &'a str, spec: &TaskSpec) -> Requirements<'a> {
        Requirements {
            service_id,
            nano_cpus: spec.resources.reserve_nano_cpus,
            memory_bytes: spec.resources.reserve_memory,
            constraints: constraint::parse_all(&spec.placement.constraints),
            max_replicas: spec.placement.max_replicas,
        }
    }
}

/// A node and what is already placed on it: the tasks that will run there (desired RUNNING,
/// not finished), including those placed earlier in the same plan.
#[derive(Clone, Debug)]
pub struct NodeLoad<'a> {
    pub node: &'a Node,
    pub reserved_nano_cpus: u64,
    pub reserved_memory: u64,
    pub tasks: usize,
    by_service: HashMap<&'a str, usize>,
}

impl<'a> NodeLoad<'a> {
    pub fn new(node: &'a Node) -> NodeLoad<'a> {
        NodeLoad {
            node,
            reserved_nano_cpus: 0,
            reserved_memory: 0,
            tasks: 0,
            by_service: HashMap::new(),
        }
    }

    /// A node with what the store's index says occupies it.
    pub fn with_usage(node: &'a Node, u: &'a crate::store::NodeUsage) -> NodeLoad<'a> {
        NodeLoad {
            node,
            reserved_nano_cpus: u.reserved_nano_cpus,
            reserved_memory: u.reserved_memory,
            tasks: u.tasks,
            by_service: u.by_service.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
        }
    }

    pub fn service_tasks(&self, service_id: &str) -> usize {
        self.by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Count one more task with these reservations.
    pub fn add(&mut self, service_id: &'a str, nano_cpus: u64, memory_bytes: u64) {
        self.reserved_nano_cpus = self.reserved_nano_cpus.saturating_add(nano_cpus);
        self.reserved_memory = self.reserved_memory.saturating_add(memory_bytes);
        self.tasks += 1;
        *self.by_service.entry(service_id).or_insert(0) += 1;
    }
}

/// Why a node cannot take a task. Ordered as the pipeline runs, so that explanations list
/// reasons in that order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    NotAvailable,
    LacksMemory,
    LacksCpu,
    InvalidConstraint(String),
    Constraints,
    MaxReplicas,
}

impl Refusal {
    /// `1 node lacks memory`, `3 nodes lack memory`.
    pub fn explain(&self, nodes: usize) -> String {
        let one = nodes == 1;
        let pick = |singular: &str, plural: &str| if one { singular } else { plural }.to_string();
        let reason = match self {
            Refusal::NotAvailable => "not available for new tasks".to_string(),
            Refusal::LacksMemory => pick("lacks memory", "lack memory"),
            Refusal::LacksCpu => pick("lacks CPU", "lack CPU"),
            Refusal::InvalidConstraint(e) => {
                format!("{} an invalid constraint ({e})", pick("has", "have"))
            }
            Refusal::Constraints => {
                pick("does not satisfy constraints", "do not satisfy constraints")
            }
            Refusal::MaxReplicas => format!(
                "{} the maximum number of replicas of the service",
                pick("has", "have")
            ),
        };
        format!("{nodes} {} {reason}", pick("node", "nodes"))
    }
}

/// Swarm's shape: `no suitable node (2 nodes not available for new tasks; 1 node lacks memory)`.
pub fn no_suitable_node(refusals: &BTreeMap<Refusal, usize>) -> String {
    if refusals.is_empty() {
        return "no suitable node (no nodes in the swarm)".to_string();
    }
    let reasons: Vec<String> = refusals.iter().map(|(r, n)| r.explain(*n)).collect();
    format!("no suitable node ({})", reasons.join("; "))
}

/// One stage of the pipeline.
pub struct Filter {
    pub name: &'static str,
    /// Whether the answer can change while a plan places tasks (it fills nodes up).
    pub dynamic: bool,
    pub check: for<'a> fn(&Requirements<'a>, &NodeLoad<'a>) -> Result<(), Refusal>,
}

pub const PIPELINE: [Filter; 4] = [
    Filter {
        name: "ready",
        dynamic: false,
        check: ready,
    },
    Filter {
        name: "resources",
        dynamic: true,
        check: resources,
    },
    Filter {
        name: "constraints",
        dynamic: false,
        check: constraints,
    },
    Filter {
        name: "max-replicas",
        dynamic: true,
        check: max_replicas,
    },
];

/// Which filters to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stages {
    All,
    /// Those whose answer stays put while a plan fills nodes: run once per group of tasks.
    Static,
    /// Those whose answer can change as the plan fills nodes: run at every pick.
    Dynamic,
}

/// The first refusal among the selected filters, in pipeline order.
pub fn check<'a>(
    req: &Requirements<'a>,
    load: &NodeLoad<'a>,
    stages: Stages,
) -> Result<(), Refusal> {
    PIPELINE
        .iter()
        .filter(|f| match stages {
            Stages::All => true,
            Stages::Static => !f.dynamic,
            Stages::Dynamic => f.dynamic,
        })
        .try_for_each(|f| (f.check)(req, load))
}

/// Paused and drained nodes keep their tasks but take no new ones.
fn ready(_: &Requirements, load: &NodeLoad) -> Result<(), Refusal> {
    let node = load.node;
    if node.state == NodeState::Ready && node.availability == Availability::Active {
        Ok(())
    } else {
        Err(Refusal::NotAvailable)
    }
}

/// A capacity of 0 means the node did not report it: no limit is enforced.
fn resources(req: &Requirements, load: &NodeLoad) -> Result<(), Refusal> {
    let desc = &load.node.description;
    let fits = |want: u64, used: u64, capacity: u64| {
        want == 0 || capacity == 0 || used.saturating_add(want) <= capacity
    };
    if !fits(req.memory_bytes, load.reserved_memory, desc.memory_bytes) {
        return Err(Refusal::LacksMemory);
    }
    if !fits(req.nano_cpus, load.reserved_nano_cpus, desc.nano_cpus) {
        return Err(Refusal::LacksCpu);
    }
    Ok(())
}

fn constraints(req: &Requirements, load: &NodeLoad) -> Result<(), Refusal> {
    match &req.constraints {
        Err(e) => Err(Refusal::InvalidConstraint(e.to_string())),
        Ok(list) if list.iter().all(|c| c.matches(load.node)) => Ok(()),
        Ok(_) => Err(Refusal::Constraints),
    }
}

fn max_replicas(req: &Requirements, load: &NodeLoad) -> Result<(), Refusal> {
    let max = usize::try_from(req.max_replicas).unwrap_or(usize::MAX);
    if max > 0 && load.service_tasks(req.service_id) >= max {
        Err(Refusal::MaxReplicas)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_agree_in_number() {
        assert_eq!(Refusal::LacksMemory.explain(1), "1 node lacks memory");
        assert_eq!(Refusal::LacksCpu.explain(2), "2 nodes lack CPU");
        assert_eq!(
            Refusal::NotAvailable.explain(3),
            "3 nodes not available for new tasks"
        );
        assert_eq!(
            Refusal::Constraints.explain(1),
            "1 node does not satisfy constraints"
        );
        assert_eq!(
            Refusal::MaxReplicas.explain(2),
            "2 nodes have the maximum number of replicas of the service"
        );
    }

    #[test]
    fn pipeline_runs_in_swarm_order() {
        let names: Vec<&str> = PIPELINE.iter().map(|f| f.name).collect();
        assert_eq!(names, ["ready", "resources", "constraints", "max-replicas"]);
    }
}
