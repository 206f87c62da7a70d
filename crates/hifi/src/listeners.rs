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
            self.unbind(name).await; // [`Listeners::keep_only`] first avoids this
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

    /// Closes every door at once: new requests wait; returns once those in flight have
    /// finished, or after the grace period: whether they all finished.
    pub async fn close(&self) -> bool {
        let closing: Vec<_> = self.bound.values().map(|l| l.door.closing()).collect();
        finished(closing).await
    }

    /// Unbinds the listeners that `wanted` (name, address, limits) does not name as
    /// they are: removed ones, and those asked elsewhere or with other limits (before
    /// any is bound, so that a port can pass from one name to another).
    pub async fn keep_only(&mut self, wanted: &[(String, SocketAddr, ServeLimits)]) {
        let gone: Vec<String> = self
            .bound
            .iter()
            .filter(|(n, l)| {
                !wanted
                    .iter()
                    .any(|(w, addr, limits)| w == *n && l.asked == (*addr, *limits))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let shutting: Vec<_> = gone.iter().map(|n| self.bound[n].door.shutting()).collect();
        finished(shutting).await;
        for name in gone {
            self.unbind(&name).await;
        }
    }

    /// Shuts every door (waiting requests are answered 503, those in flight finish) and
    /// unbinds every listener.
    pub async fn shut(mut self) {
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

/// Waits for doors closed together, within one grace period.
async fn finished(closing: Vec<hifi_server::door::Closing>) -> bool {
    let deadline = std::time::Instant::now() + hifi_server::serve::SHUTDOWN_GRACE;
    let mut all = true;
    for c in closing {
        all &= c.finished(deadline).await;
    }
    all
}
