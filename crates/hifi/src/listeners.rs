//! The process's HTTP listeners (each HTTP source's, the admin API's), kept bound across
//! restarts of the nodes: a reload or a publish closes their doors
//! ([`hifi_server::door`]) — requests wait — and opens them onto the new nodes' routers,
//! instead of closing the sockets (connections refused, keep-alive connections dropped)
//! and binding them again (a `:0` port changed, a port another process could take).
//!
//! A listener is kept while the file asks for the same address and limits; a changed
//! one is shut (requests waiting there are answered 503) and bound again, and a removed
//! one is shut.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use axum::Router;
use hifi_server::door::Door;
use hifi_server::receiver::bind;
use hifi_server::ServeLimits;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Listener {
    /// What the file asked for.
    asked: (SocketAddr, ServeLimits),
    bound: SocketAddr,
    door: Door,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

/// See the module's documentation. Listeners are named `sources.NAME` and `admin`.
#[derive(Default)]
pub struct Listeners {
    bound: BTreeMap<String, Listener>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.bound.iter().map(|(n, l)| (n, l.bound)))
            .finish()
    }
}

impl Listeners {
    /// Makes sure listener `name` is bound as asked (its door closed until
    /// [`Listeners::open`]); returns its address.
    pub async fn bind(
        &mut self,
        name: &str,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> Result<SocketAddr> {
        if let Some(l) = self.bound.get(name) {
            if l.asked == (addr, limits) {
                return Ok(l.bound);
            }
            self.unbind(name).await;
        }
        let listener = bind(addr, name).await?;
        let bound = listener.local_addr()?;
        let door = Door::new();
        let stop = CancellationToken::new();
        let server = tokio::spawn(hifi_server::serve(
            listener,
            door.router(),
            stop.clone(),
            limits,
        ));
        self.bound.insert(
            name.to_owned(),
            Listener {
                asked: (addr, limits),
                bound,
                door,
                stop,
                server,
            },
        );
        Ok(bound)
    }

    /// Sends listener `name`'s requests to `app`.
    pub fn open(&self, name: &str, app: Router) {
        if let Some(l) = self.bound.get(name) {
            l.door.open(app);
        }
    }

    /// Closes every door: new requests wait; returns once those in flight have finished.
    pub async fn close(&self) {
        for l in self.bound.values() {
            l.door.close().await;
        }
    }

    /// Unbinds the listeners not named in `keep`.
    pub async fn keep_only(&mut self, keep: &[String]) {
        let gone: Vec<String> = self
            .bound
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.unbind(&name).await;
        }
    }

    /// Shuts every door (waiting requests are answered 503, those in flight finish) and
    /// unbinds every listener.
    pub async fn shut(mut self) {
        for l in self.bound.values() {
            l.door.shut().await;
        }
        self.keep_only(&[]).await;
    }

    async fn unbind(&mut self, name: &str) {
        if let Some(l) = self.bound.remove(name) {
            l.door.shut().await;
            l.stop.cancel();
            let _ = l.server.await;
        }
    }
}
