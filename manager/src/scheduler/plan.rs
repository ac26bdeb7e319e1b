//! The pure core: where each waiting task goes, or why it cannot go anywhere.
//!
//! Waiting tasks are grouped by service and spec, so the static filters run once per group.
//! The group's eligible nodes are arranged as a tree, one level per spread preference (a
//! branch per label value) with heaps at every level, so placing a task costs a few heap
//! operations rather than a scan of the nodes:
//!
//! ```text
//!   branch heap  (tasks of the service under the branch, branch)      ← spread=node.labels.zone
//!     ├─ zone=a: leaf heap (tasks of the service, all tasks, node)
//!     └─ zone=b: leaf heap …
//! ```
//!
//! Picking pops the best entry, checks the dynamic filters (which only ever get stricter as the
//! plan fills nodes, so a node they refuse can be dropped for the rest of the group), and
//! pushes the entry back with its new counts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use proto::spec::{TaskSpec, TaskState};

use super::constraint;
use super::filter::{self, NodeLoad, Requirements, Stages};
use super::Decision;
use crate::store::{StoreData, Task};

/// A task the scheduler must place: it should run, holds its addresses, and has not been
/// given a node yet (or, for a global task, its node has not accepted it yet).
pub fn needs_scheduling(task: &Task) -> bool {
    meant_to_run(task) && task.status.state <= TaskState::Pending && !task.awaiting_addresses
}

fn meant_to_run(task: &Task) -> bool {
    task.meant_to_run()
}

/// Decide, for every task that needs scheduling, a node or the reason it must wait.
/// Deterministic: the same data gives the same decisions in the same order.
pub fn plan(data: &StoreData) -> Vec<Decision> {
    let mut nodes = Nodes::load(data);
    let groups = pending_groups(data);
    let mut out = Vec::new();
    // Tasks bound to a node (global services) go first: they have nowhere else to go, so they
    // get the first claim on their node's resources.
    for group in &groups {
        for task in &group.bound {
            place_bound(task, &group.req, &mut nodes, &mut out);
        }
    }
    for group in &groups {
        place_free(group, &mut nodes, &mut out);
    }
    out
}

/// Every node with its current load, in id order; a node's index doubles as its id rank.
struct Nodes<'a> {
    loads: Vec<NodeLoad<'a>>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Nodes<'a> {
    /// From the store's index of what occupies each node: work in the nodes, not the tasks.
    fn load(data: &'a StoreData) -> Nodes<'a> {
        let loads: Vec<NodeLoad> = data
            .nodes
            .values()
            .map(|n| match data.usage.get(&n.id) {
                Some(u) => NodeLoad::with_usage(n, u),
                None => NodeLoad::new(n),
            })
            .collect();
        let index: HashMap<&str, usize> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| (l.node.id.as_str(), i))
            .collect();
        Nodes { loads, index }
    }

    fn commit(&mut self, i: usize, req: &Requirements<'a>) {
        self.loads[i].add(req.service_id, req.nano_cpus, req.memory_bytes);
    }

    /// Each node counted under the first filter that refuses it.
    fn explain(&self, req: &Requirements<'a>) -> String {
        let mut refusals = BTreeMap::new();
        for load in &self.loads {
            if let Err(r) = filter::check(req, load, Stages::All) {
                *refusals.entry(r).or_insert(0) += 1;
            }
        }
        filter::no_suitable_node(&refusals)
    }
}

/// Waiting tasks of one service that share a spec, hence requirements.
struct Group<'a> {
    spec: &'a TaskSpec,
    req: Requirements<'a>,
    spread: Vec<String>,
    /// Tasks created with their node (global services).
    bound: Vec<&'a Task>,
    free: Vec<&'a Task>,
}

/// Groups ordered by service id, then by their first task id; tasks by id.
fn pending_groups(data: &StoreData) -> Vec<Group<'_>> {
    let mut by_service: BTreeMap<&str, Vec<Group>> = BTreeMap::new();
    // The store's index of unplaced tasks, in id order as the tasks are.
    let waiting = data.unplaced.iter().filter_map(|id| data.tasks.get(id));
    for task in waiting.filter(|t| needs_scheduling(t)) {
        let groups = by_service.entry(&task.service_id).or_default();
        // A service has one spec, or two during a rolling update: a linear search is cheap
        // (the store shares one copy of a spec among its tasks, so mostly a pointer test).
        let group = match groups
            .iter()
            .position(|g| std::ptr::eq(g.spec, &*task.spec) || *g.spec == *task.spec)
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    spec: &task.spec,
                    req: Requirements::new(&task.service_id, &task.spec),
                    spread: constraint::spread_labels(&task.spec.placement.preferences),
                    bound: Vec::new(),
                    free: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        if task.node_id.is_empty() {
            group.free.push(task);
        } else {
            group.bound.push(task);
        }
    }
    by_service.into_values().flatten().collect()
}

fn place_bound<'a>(
    task: &Task,
    req: &Requirements<'a>,
    nodes: &mut Nodes<'a>,
    out: &mut Vec<Decision>,
) {
    let Some(&i) = nodes.index.get(task.node_id.as_str()) else {
        let message = format!(
            "no suitable node (node {} is not in the swarm)",
            task.node_id
        );
        push_pending(task, message, out);
        return;
    };
    match filter::check(req, &nodes.loads[i], Stages::All) {
        Ok(()) => {
            nodes.commit(i, req);
            out.push(Decision::Assign {
                task_id: task.id.clone(),
                node_id: task.node_id.clone(),
            });
        }
        Err(refusal) => {
            let message = filter::no_suitable_node(&BTreeMap::from([(refusal, 1)]));
            push_pending(task, message, out);
        }
    }
}

fn place_free<'a>(group: &Group<'a>, nodes: &mut Nodes<'a>, out: &mut Vec<Decision>) {
    if group.free.is_empty() {
        return;
    }
    let eligible: Vec<usize> = (0..nodes.loads.len())
        .filter(|&i| filter::check(&group.req, &nodes.loads[i], Stages::Static).is_ok())
        .collect();
    let mut tree = Tree::build(&group.spread, eligible, &group.req, nodes);
    for (n, task) in group.free.iter().enumerate() {
        match tree.pick(&group.req, nodes) {
            Some(i) => out.push(Decision::Assign {
                task_id: task.id.clone(),
                node_id: nodes.loads[i].node.id.clone(),
            }),
            None => {
                // Nothing frees up within a plan: the rest of the group waits for the same reason.
                let message = nodes.explain(&group.req);
                for task in &group.free[n..] {
                    push_pending(task, message.clone(), out);
                }
                return;
            }
        }
    }
}

/// Rewriting a task with the status it already has would only churn the store.
fn push_pending(task: &Task, message: String, out: &mut Vec<Decision>) {
    if task.status.state != TaskState::Pending || task.status.message != message {
        out.push(Decision::Pending {
            task_id: task.id.clone(),
            message,
        });
    }
}

/// Min-heap entries. A leaf ranks nodes by (tasks of this service, all tasks, node id); a
/// branch ranks label values by (tasks of this service beneath it, value order).
type LeafKey = Reverse<(usize, usize, usize)>;
type BranchKey = Reverse<(usize, usize)>;

enum Tree {
    Leaf(BinaryHeap<LeafKey>),
    Branch {
        heap: BinaryHeap<BranchKey>,
        children: Vec<Tree>,
    },
}

fn leaf_key(req: &Requirements, nodes: &Nodes, i: usize) -> LeafKey {
    let load = &nodes.loads[i];
    Reverse((load.service_tasks(req.service_id), load.tasks, i))
}

impl Tree {
    fn build(spread: &[String], eligible: Vec<usize>, req: &Requirements, nodes: &Nodes) -> Tree {
        let Some((label, rest)) = spread.split_first() else {
            return Tree::Leaf(eligible.iter().map(|&i| leaf_key(req, nodes, i)).collect());
        };
        // Nodes without the label form a group of their own, ordered after the labelled ones.
        let mut by_value: BTreeMap<(bool, &str), Vec<usize>> = BTreeMap::new();
        for i in eligible {
            let value = nodes.loads[i].node.labels.get(label);
            by_value
                .entry((value.is_none(), value.map_or("", String::as_str)))
                .or_default()
                .push(i);
        }
        let mut heap = BinaryHeap::with_capacity(by_value.len());
        let mut children = Vec::with_capacity(by_value.len());
        for (k, members) in by_value.into_values().enumerate() {
            let placed = members
                .iter()
                .map(|&i| nodes.loads[i].service_tasks(req.service_id))
                .sum();
            heap.push(Reverse((placed, k)));
            children.push(Tree::build(rest, members, req, nodes));
        }
        Tree::Branch { heap, children }
    }

    /// The best node that passes the dynamic filters, already counted as holding the task;
    /// None once no node beneath can take another task of the group.
    fn pick<'a>(&mut self, req: &Requirements<'a>, nodes: &mut Nodes<'a>) -> Option<usize> {
        match self {
            Tree::Leaf(heap) => {
                while let Some(Reverse((_, _, i))) = heap.pop() {
                    if filter::check(req, &nodes.loads[i], Stages::Dynamic).is_ok() {
                        nodes.commit(i, req);
                        heap.push(leaf_key(req, nodes, i));
                        return Some(i);
                    }
                }
                None
            }
            Tree::Branch { heap, children } => {
                while let Some(Reverse((placed, k))) = heap.pop() {
                    if let Some(i) = children[k].pick(req, nodes) {
                        heap.push(Reverse((placed + 1, k)));
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}
