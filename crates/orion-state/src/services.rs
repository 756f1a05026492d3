//! Applying the service commands: create, update (a new version and a deployment when the
//! tasks change), scale, delete (its tasks stop, then it goes), rollback, and what the
//! services reconciler proposes (new tasks, stops, deployment progress). Pure like the rest
//! of `apply`: every id and time comes in the command.

use crate::{ClusterState, Key};
use orion_types::{
    Deployment, DeploymentState, Health, NewServiceTask, Response, Service, ServiceMode,
    ServiceSpec, Task, TaskState, UnixMillis, limits,
};

/// A service's replica counts as API.md shows them (`replicas: {desired, running, healthy}`)
/// and `/metrics` exports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaCounts {
    pub desired: u32,
    pub running: u32,
    /// Running and healthy, or running with no health check.
    pub healthy: u32,
}

impl ClusterState {
    /// The one place the replica counts of `svc` are computed.
    pub fn replica_counts(&self, svc: &Service) -> ReplicaCounts {
        let mut c = ReplicaCounts::default();
        let mut live = 0u32;
        for t in self.tasks_of_service(&svc.id) {
            if t.state != TaskState::Stopped {
                live += 1;
            }
            if t.state == TaskState::Running {
                c.running += 1;
                if matches!(t.health, Health::None | Health::Healthy) {
                    c.healthy += 1;
                }
            }
        }
        c.desired = match svc.spec.mode {
            ServiceMode::Replicated => svc.spec.replicas,
            // One per node that runs or is getting a task: what the reconciler keeps.
            ServiceMode::Global => live,
        };
        c
    }

    /// Tasks of service `id`, stopped ones included.
    pub fn tasks_of_service<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .map(|t| &**t)
            .filter(move |t| t.service.as_deref() == Some(id))
    }

    pub(crate) fn create_service(
        &mut self,
        spec: &ServiceSpec,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        let id = spec.id();
        if self.services.contains_key(&id) {
            return Response::Conflict(format!("service {id} already exists"));
        }
        // The lowest free address of the range: the same on every node, since `apply` runs in
        // log order; a deleted service's address is free again.
        let taken: std::collections::BTreeSet<std::net::Ipv4Addr> =
            self.services.values().filter_map(|s| s.vip).collect();
        let range = self.config().vip_range;
        let Some(vip) = range.lowest_free(&taken) else {
            return Response::Conflict(format!(
                "no free virtual IP for service {id}: every address of vipRange {range} is taken; widen it (orion cluster config --vip-range)"
            ));
        };
        let vip = Some(vip);
        let service = Service {
            id: id.clone(),
            spec: spec.clone(),
            version: 1,
            previous: None,
            created_at: at,
            updated_at: at,
            deployment: None,
            vip,
            volume_node: None,
        };
        self.services.insert(id.clone(), service.clone());
        touched.push(Key::Service(id));
        Response::Service(Box::new(service))
    }

    pub(crate) fn update_service(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        deployment_id: &str,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        if spec.id() != id {
            return Response::Invalid(format!(
                "name: the spec names service {}, not {id}; a service cannot be renamed",
                spec.id()
            ));
        }
        let live = self.live_tasks(id);
        let Some(svc) = self.services.get_mut(id) else {
            return Response::NotFound(format!("service {id} not found"));
        };
        if svc.spec == *spec {
            return Response::Service(Box::new(svc.clone()));
        }
        let tasks_change = !svc.spec.same_tasks(spec);
        let old = std::mem::replace(&mut svc.spec, spec.clone());
        svc.previous = Some(old);
        svc.version += 1;
        svc.updated_at = at;
        if tasks_change {
            let total = match spec.mode {
                ServiceMode::Replicated => spec.replicas,
                ServiceMode::Global => live,
            };
            svc.deployment = Some(new_deployment(
                deployment_id,
                svc.version - 1,
                svc.version,
                DeploymentState::Running,
                format!("updating to version {}", svc.version),
                total,
                at,
            ));
        }
        touched.push(Key::Service(id.to_string()));
        Response::Service(Box::new(svc.clone()))
    }

    pub(crate) fn scale_service(
        &mut self,
        id: &str,
        replicas: u32,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        let Some(svc) = self.services.get_mut(id) else {
            return Response::NotFound(format!("service {id} not found"));
        };
        if svc.spec.mode == ServiceMode::Global {
            return Response::Invalid(format!(
                "replicas: service {id} is global (one task per eligible node); it cannot be scaled"
            ));
        }
        if svc.spec.replicas != replicas {
            // A change of count, not of what runs: no deployment, and `previous` stays the
            // spec a rollback would return to.
            svc.spec.replicas = replicas;
            svc.version += 1;
            svc.updated_at = at;
            if let Some(d) = svc.deployment.as_mut()
                && d.state.is_active()
            {
                d.total = replicas;
            }
            touched.push(Key::Service(id.to_string()));
        }
        Response::Service(Box::new(svc.clone()))
    }

    pub(crate) fn delete_service(
        &mut self,
        id: &str,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        let Some(svc) = self.services.remove(id) else {
            return Response::NotFound(format!("service {id} not found"));
        };
        let ids: Vec<String> = self.tasks_of_service(id).map(|t| t.id.clone()).collect();
        self.stop_tasks(&ids, &format!("service {id} was removed"), at, touched);
        touched.push(Key::Service(id.to_string()));
        Response::Service(Box::new(svc))
    }

    pub(crate) fn rollback_service(
        &mut self,
        id: &str,
        deployment_id: &str,
        reason: Option<&str>,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        let live = self.live_tasks(id);
        let Some(svc) = self.services.get_mut(id) else {
            return Response::NotFound(format!("service {id} not found"));
        };
        let Some(mut previous) = svc.previous.clone() else {
            return Response::Invalid(format!("service {id} has no previous spec to roll back to"));
        };
        if let Some(reason) = reason {
            // Automatic: only for the deployment that failed, and only once.
            let current = svc
                .deployment
                .as_ref()
                .is_some_and(|d| d.id == deployment_id && d.state == DeploymentState::Running);
            if !current {
                return Response::Ignored(format!(
                    "deployment {deployment_id} of {id} is no longer running"
                ));
            }
            if let Some(d) = svc.deployment.as_mut() {
                d.transition(
                    DeploymentState::RollingBack,
                    format!("rolling back: {reason}"),
                    at,
                );
                d.updated = 0;
            }
        }
        // A rollback returns to the previous tasks and policies, not to the previous count.
        previous.replicas = svc.spec.replicas;
        let failed = std::mem::replace(&mut svc.spec, previous);
        svc.previous = Some(failed);
        svc.version += 1;
        svc.updated_at = at;
        if reason.is_none() {
            let total = match svc.spec.mode {
                ServiceMode::Replicated => svc.spec.replicas,
                ServiceMode::Global => live,
            };
            svc.deployment = Some(new_deployment(
                deployment_id,
                svc.version - 1,
                svc.version,
                DeploymentState::RollingBack,
                "rolling back on request".to_string(),
                total,
                at,
            ));
        }
        touched.push(Key::Service(id.to_string()));
        Response::Service(Box::new(svc.clone()))
    }

    pub(crate) fn create_service_tasks(
        &mut self,
        tasks: &[NewServiceTask],
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        for new in tasks {
            let Some(svc) = self.services.get(&new.service) else {
                continue;
            };
            // Proposed from an older state (a deposed leader): the next pass decides again.
            let stale = svc.version != new.version
                || match svc.spec.mode {
                    ServiceMode::Replicated => {
                        new.slot.is_none_or(|s| s == 0 || s > svc.spec.replicas)
                    }
                    ServiceMode::Global => new.slot.is_some(),
                };
            if stale || self.tasks.contains_key(&new.task_id) {
                continue;
            }
            let health = svc.spec.initial_health();
            let mut task = Task::new(new.task_id.clone(), (*new.spec).clone(), at);
            task.service = Some(new.service.clone());
            task.version = new.version;
            task.slot = new.slot;
            task.health = health;
            self.tasks
                .insert(new.task_id.clone(), std::sync::Arc::new(task));
            touched.push(Key::Task(new.task_id.clone()));
        }
        Response::Ok
    }

    /// Stops each task that is not stopped yet, like a user's delete but with `reason`.
    pub(crate) fn stop_tasks(
        &mut self,
        ids: &[String],
        reason: &str,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) {
        for id in ids {
            let Some(task) = crate::task_mut(&mut self.tasks, id) else {
                continue;
            };
            if task.state != TaskState::Stopped {
                task.allocation = None;
                task.restart_at = None;
                task.running_since = None;
                task.reason = Some(reason.to_string());
                task.transition(TaskState::Stopped, at, reason);
                touched.push(Key::Task(id.clone()));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deployment_progress(
        &mut self,
        id: &str,
        deployment_id: &str,
        state: DeploymentState,
        (updated, failed): (u32, u32),
        message: &str,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        let Some(svc) = self.services.get_mut(id) else {
            return Response::NotFound(format!("service {id} not found"));
        };
        let Some(d) = svc.deployment.as_mut().filter(|d| d.id == deployment_id) else {
            return Response::Ignored(format!(
                "deployment {deployment_id} is no longer the latest of {id}"
            ));
        };
        if d.state == state && d.updated == updated && d.failed == failed && d.message == message {
            return Response::Ignored("no change".to_string());
        }
        d.updated = updated;
        d.failed = failed;
        if d.state != state || d.message != message {
            d.transition(state, message.to_string(), at);
        }
        touched.push(Key::Service(id.to_string()));
        Response::Ok
    }

    /// Tasks of the service that are not stopped.
    fn live_tasks(&self, id: &str) -> u32 {
        self.tasks_of_service(id)
            .filter(|t| t.state != TaskState::Stopped)
            .count() as u32
    }
}

fn new_deployment(
    id: &str,
    from_version: u64,
    to_version: u64,
    state: DeploymentState,
    message: String,
    total: u32,
    at: UnixMillis,
) -> Deployment {
    let mut d = Deployment {
        id: id.to_string(),
        from_version,
        to_version,
        state,
        updated: 0,
        total,
        failed: 0,
        message: String::new(),
        started_at: at,
        ended_at: None,
        events: Vec::new(),
    };
    d.transition(state, message, at);
    d
}

/// Records a health transition (the output alone is not one). Returns whether it changed.
pub(crate) fn set_health(
    task: &mut Task,
    health: Health,
    output: Option<&str>,
    at: UnixMillis,
) -> bool {
    if task.health == health {
        return false;
    }
    task.health = health;
    task.health_since = Some(at);
    task.health_output = output.map(|o| {
        let mut end = o.len().min(limits::HEALTH_OUTPUT_BYTES_MAX);
        while !o.is_char_boundary(end) {
            end -= 1;
        }
        o[..end].to_string()
    });
    task.updated_at = at;
    true
}
