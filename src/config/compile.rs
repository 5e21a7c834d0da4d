//! Stage 3: `model::Config` → the immutable `Snapshot` the request path reads.
//! Everything that can be decided once is decided here: the router, each route's
//! plugin chain in execution order, upstream authorities and Host values, clients.

use super::model::{Config, Route, Scope};
use crate::config::snapshot::{ChainLink, CompiledRoute, Snapshot, UpstreamTarget};
use crate::router::{RouteSpec, Router};
use crate::upstream::ClientCache;
use crate::yaml::walk::ConfigError;
use std::sync::Arc;

fn spec(r: &Route) -> RouteSpec {
    RouteSpec {
        methods: r.methods.clone(),
        hosts: r.hosts.clone(),
        headers: r.headers.clone(),
        paths: r.paths.clone(),
        regex_priority: r.regex_priority,
        expression: r.expression.clone(),
        priority: r.priority,
        protocols: [(r.http, "http"), (r.https, "https")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p.to_string())
            .collect(),
    }
}

/// Routes that take part in routing: those of enabled services, and serviceless ones.
fn routable(cfg: &Config) -> Vec<usize> {
    (0..cfg.routes.len())
        .filter(|&i| {
            cfg.routes[i]
                .service
                .is_none_or(|s| cfg.services[s].enabled)
        })
        .collect()
}

/// Whether the routes that take no part in routing (those of disabled services) compile:
/// [`compile`] builds the router of the others.
pub fn unroutable_compile(cfg: &Config) -> bool {
    let routable = routable(cfg);
    let specs: Vec<RouteSpec> = (0..cfg.routes.len())
        .filter(|i| routable.binary_search(i).is_err())
        .map(|i| spec(&cfg.routes[i]))
        .collect();
    specs.is_empty() || Router::new(&specs).is_ok()
}

/// Router build errors (regexes) mapped back to the route's position.
pub fn check_router(file: &str, cfg: &Config) -> Vec<ConfigError> {
    let specs: Vec<RouteSpec> = cfg.routes.iter().map(spec).collect();
    match Router::new(&specs) {
        Ok(_) => Vec::new(),
        Err(errs) => errs
            .into_iter()
            .map(|e| ConfigError {
                file: file.to_string(),
                pos: cfg
                    .routes
                    .get(e.route)
                    .map(|r| {
                        if e.field == "expression" {
                            r.expression_pos
                        } else {
                            r.pos
                        }
                    })
                    .unwrap_or_default(),
                message: format!(
                    "route '{}'.{}: {}",
                    cfg.routes
                        .get(e.route)
                        .map(|r| r.display_name().to_string())
                        .unwrap_or_default(),
                    e.field,
                    e.message
                ),
            })
            .collect(),
    }
}

/// The plugins that apply to a request on `route` (Kong's precedence: for each plugin
/// name the most specific scope wins), sorted by PRIORITY, highest first.
pub fn chain_for(cfg: &Config, route: Option<usize>) -> Vec<ChainLink> {
    let service = route.and_then(|r| cfg.routes[r].service);
    let mut best: Vec<(u8, usize)> = Vec::new();
    let mut for_consumers: Vec<(u8, usize)> = Vec::new();
    for (i, p) in cfg.plugins.iter().enumerate() {
        if !p.enabled {
            continue;
        }
        let applies = match (p.scope.route, p.scope.service) {
            (None, None) => true,
            (Some(r), None) => Some(r) == route,
            (None, Some(s)) => Some(s) == service,
            (Some(r), Some(s)) => Some(r) == route && Some(s) == service,
        };
        if !applies {
            continue;
        }
        let rank = p.scope.rank();
        if p.scope.consumer.is_some() {
            // Chosen at run time, once the consumer is known (see proxy.rs).
            for_consumers.push((rank, i));
            continue;
        }
        match best
            .iter_mut()
            .find(|(_, j)| cfg.plugins[*j].name == p.name)
        {
            Some(slot) if rank < slot.0 => *slot = (rank, i),
            Some(_) => {}
            None => best.push((rank, i)),
        }
    }
    let mut picked: Vec<(u8, usize)> = best;
    picked.extend(for_consumers);
    // Priority first; within one plugin name the most specific scope first, so the
    // first entry whose consumer condition holds is Kong's choice.
    picked.sort_by_key(|&(rank, i)| {
        (
            std::cmp::Reverse(cfg.plugins[i].plugin.priority()),
            cfg.plugins[i].name,
            rank,
        )
    });
    picked
        .into_iter()
        .map(|(_, i)| ChainLink {
            plugin: Arc::clone(&cfg.plugins[i].plugin),
            scope: cfg.plugins[i].scope,
            pos: cfg.plugins[i].pos,
        })
        .collect()
}

pub fn compile(
    cfg: Config,
    file: &str,
    config_hash: String,
    generation: u64,
    clients: &ClientCache,
) -> Result<Snapshot, Vec<ConfigError>> {
    let routable = routable(&cfg);
    let specs: Vec<RouteSpec> = routable.iter().map(|&i| spec(&cfg.routes[i])).collect();
    let router = Router::new(&specs).map_err(|_| check_router(file, &cfg))?;
    let upstreams: Vec<Arc<UpstreamTarget>> = cfg
        .services
        .iter()
        .map(|s| Arc::new(UpstreamTarget::new(s, clients)))
        .collect();
    let routes = routable
        .iter()
        .map(|&i| CompiledRoute {
            index: i,
            name: Arc::from(cfg.routes[i].display_name()),
            chain: chain_for(&cfg, Some(i)),
            upstream: cfg.routes[i].service.map(|s| Arc::clone(&upstreams[s])),
            metrics: std::sync::OnceLock::new(),
        })
        .collect();
    let global_chain = chain_for(&cfg, None)
        .into_iter()
        .filter(|l| l.scope == Scope::default())
        .collect();
    Ok(Snapshot {
        consumers: crate::consumers::Consumers::build(
            &cfg.consumers,
            &cfg.acls,
            &cfg.keyauth_credentials,
            &cfg.basicauth_credentials,
            cfg.transform,
        ),
        generation,
        config_hash,
        file: file.to_string(),
        loaded_at: std::time::SystemTime::now(),
        router,
        routes,
        global_chain,
        config: cfg,
        no_route_metrics: std::sync::OnceLock::new(),
    })
}
