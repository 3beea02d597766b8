//! Process-wide state every connection shares: the config snapshot, the pools, the connector, the metrics and the phase of life.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::connect::Connector;
use crate::intercept::server::Interceptor;
use crate::metrics::Metrics;
pub use crate::phase::Phase;
use crate::phase::Phases;
use crate::pool::Pools;
use crate::upstream::UpstreamConn;

/// State shared by every connection.
pub struct Shared {
    /// Swapped whole on reload; requests keep the snapshot they started with.
    config: RwLock<Arc<Config>>,
    /// Counts config swaps, so that a connection re-reads the config only when it changed.
    config_epoch: AtomicU64,
    pub pools: Pools<UpstreamConn>,
    pub connector: Connector,
    pub metrics: Metrics,
    pub phase: Phases,
    /// The intercept CA, its leaf cache and the TLS server side of interception (SPEC §9).
    pub intercept: Interceptor,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics) -> Arc<Shared> {
        let connector = Connector::new(&config.proxy);
        let intercept = Interceptor::new(&config, &metrics);
        metrics.upstream_series(config.upstreams.iter().map(|u| u.name.as_str()));
        Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            config_epoch: AtomicU64::new(0),
            pools: Pools::new(metrics.clone()),
            connector,
            metrics,
            phase: Phases::default(),
            intercept,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Take a new config for new requests; pools pick up new limits, removed upstreams drain.
    /// Learned idle limits (SPEC §11) survive, except those of upstreams whose idle settings
    /// changed: forgotten first, so the pools' new limits no longer include them.
    pub fn replace_config(&self, config: Config) {
        self.pools.learned.reload(&self.config(), &config);
        self.pools.reconfigure(&config);
        self.metrics
            .upstream_series(config.upstreams.iter().map(|u| u.name.as_str()));
        self.connector.reload();
        self.intercept.reload(&config);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.config_epoch.fetch_add(1, Ordering::Release);
    }

    /// The number of config swaps so far. Read it before [`Shared::config`]: a config read
    /// after seeing a count is at least that recent.
    pub fn config_epoch(&self) -> u64 {
        self.config_epoch.load(Ordering::Acquire)
    }

    pub fn draining(&self) -> bool {
        self.phase.get() != Phase::Running
    }
}
