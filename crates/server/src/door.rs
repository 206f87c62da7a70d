//! A listener's door: the router behind a listener can be closed and opened onto another
//! one while the listener stays bound, so a restart of the nodes (a reload, a publish)
//! makes requests wait for it instead of refusing connections, and keep-alive
//! connections stay open across it.
//!
//! - **Open**: requests go to the router; each one is counted while in flight.
//! - [`Door::close`]: new requests wait; it returns once those in flight have finished
//!   (at most [`SHUTDOWN_GRACE`]), so nothing reaches the router after it.
//! - [`Door::open`]: the waiting requests go on, to the new router.
//! - [`Door::shut`]: for good; waiting and new requests are answered 503.
//!
//! A request waits at most [`WAIT`] for a closed door, then it is answered 503 with
//! `Retry-After: 1` (the restart takes longer than a client should hang on).

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::serve::SHUTDOWN_GRACE;

/// Longest time a request waits for a closed door.
pub const WAIT: Duration = Duration::from_secs(30);

enum State {
    Open(Router, TaskTracker),
    Closed,
    Shut,
}

/// See the module's documentation.
pub struct Door {
    state: watch::Sender<State>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.borrow() {
            State::Open(..) => "open",
            State::Closed => "closed",
            State::Shut => "shut",
        };
        f.debug_struct("Door").field("state", &state).finish()
    }
}

impl Default for Door {
    fn default() -> Self {
        Door::new()
    }
}

impl Door {
    /// A closed door (requests wait until it opens).
    pub fn new() -> Door {
        Door {
            state: watch::Sender::new(State::Closed),
        }
    }

    /// The router to serve on the listener: every request goes through the door.
    pub fn router(&self) -> Router {
        let state = self.state.subscribe();
        Router::new().fallback(move |req: Request| pass(state.clone(), req))
    }

    /// Sends requests to `app` from now on (waiting ones included).
    pub fn open(&self, app: Router) {
        self.state
            .send_replace(State::Open(app, TaskTracker::new()));
    }

    /// Makes new requests wait; whether the requests in flight finished within
    /// [`SHUTDOWN_GRACE`] (`false`, with a warning, when some have not: they go on).
    pub async fn close(&self) -> bool {
        self.closing()
            .finished(Instant::now() + SHUTDOWN_GRACE)
            .await
    }

    /// Answers waiting and new requests 503; returns as [`Door::close`].
    pub async fn shut(&self) -> bool {
        self.shutting()
            .finished(Instant::now() + SHUTDOWN_GRACE)
            .await
    }

    /// [`Door::close`] in two steps: new requests wait from now; the requests in
    /// flight are waited for with [`Closing::finished`] (several doors closed at once
    /// are waited for together).
    pub fn closing(&self) -> Closing {
        self.replace(State::Closed)
    }

    /// [`Door::shut`] in two steps, as [`Door::closing`].
    pub fn shutting(&self) -> Closing {
        self.replace(State::Shut)
    }

    fn replace(&self, next: State) -> Closing {
        match self.state.send_replace(next) {
            State::Open(_, in_flight) => {
                in_flight.close();
                Closing(Some(in_flight))
            }
            _ => Closing(None),
        }
    }
}

/// The requests that were in flight when a door closed.
#[derive(Debug)]
pub struct Closing(Option<TaskTracker>);

impl Closing {
    /// Waits for them until `deadline`; whether they all finished.
    pub async fn finished(self, deadline: Instant) -> bool {
        let Some(in_flight) = self.0 else {
            return true;
        };
        if tokio::time::timeout_at(deadline.into(), in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                requests = in_flight.len(),
                "requests still in flight after the shutdown grace period; going on without them"
            );
            return false;
        }
        true
    }
}

/// Waits for the door to be open, then hands `req` to its router. Health probes are
/// answered at a closed door: the process is alive (`/healthz`), not ready (`/readyz`).
async fn pass(mut state: watch::Receiver<State>, req: Request) -> Response {
    if matches!(&*state.borrow(), State::Closed) {
        match req.uri().path() {
            "/healthz" => return "ok\n".into_response(),
            "/readyz" => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the nodes are restarting (a reload or a publish)\n",
                )
                    .into_response()
            }
            _ => {}
        }
    }
    let passage = {
        let waited =
            tokio::time::timeout(WAIT, state.wait_for(|s| !matches!(s, State::Closed))).await;
        match waited {
            // The token is taken under the watch's read lock: a close, which replaces
            // the state under its write lock, then waits for this request.
            Ok(Ok(s)) => match &*s {
                State::Open(app, in_flight) => Some((app.clone(), in_flight.token())),
                _ => None,
            },
            Ok(Err(_)) => None, // the door is gone
            Err(_) => {
                return unavailable(&format!(
                    "hifi is restarting its nodes and has not finished within {} s; retry",
                    WAIT.as_secs()
                ))
            }
        }
    };
    let Some((app, token)) = passage else {
        return unavailable("hifi is stopping; retry (another instance, or after its restart)");
    };
    let answer = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    drop(token);
    answer
}

fn unavailable(message: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": message, "retry": true })),
    )
        .into_response();
    r.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, 1.into());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;

    fn app(answer: &'static str) -> Router {
        Router::new().route("/", get(move || async move { answer }))
    }

    async fn call(door: &Door) -> (StatusCode, String) {
        let r = door
            .router()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_request_waits_for_the_door_to_open_and_reaches_the_new_router() {
        let door = std::sync::Arc::new(Door::new());
        door.open(app("first"));
        assert_eq!(call(&door).await.1, "first");
        door.close().await;
        let waiting = tokio::spawn({
            let door = door.clone();
            async move { call(&door).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a closed door must hold requests");
        door.open(app("second"));
        assert_eq!(waiting.await.unwrap(), (StatusCode::OK, "second".into()));
    }

    #[tokio::test]
    async fn close_waits_for_requests_in_flight() {
        let door = std::sync::Arc::new(Door::new());
        let (entered, inside) = tokio::sync::oneshot::channel::<()>();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let hooks = std::sync::Arc::new(std::sync::Mutex::new(Some((entered, held))));
        let slow = Router::new().route(
            "/",
            get(move || {
                let hooks = hooks.lock().unwrap().take();
                async move {
                    if let Some((entered, held)) = hooks {
                        let _ = entered.send(());
                        let _ = held.await;
                    }
                    "slow"
                }
            }),
        );
        door.open(slow);
        let in_flight = tokio::spawn({
            let door = door.clone();
            async move { call(&door).await }
        });
        inside.await.unwrap();
        let closing = tokio::spawn({
            let door = door.clone();
            async move { door.close().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !closing.is_finished(),
            "close must wait for the request in flight"
        );
        release.send(()).unwrap();
        assert!(closing.await.unwrap(), "every request finished");
        assert_eq!(in_flight.await.unwrap().1, "slow");
    }

    #[tokio::test]
    async fn health_probes_are_answered_at_a_closed_door() {
        let door = Door::new();
        let probe = |path: &'static str| {
            door.router()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
        };
        assert_eq!(probe("/healthz").await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            probe("/readyz").await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        door.open(app("open"));
        assert_eq!(
            probe("/readyz").await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "an open door hands probes to its router"
        );
    }

    #[tokio::test]
    async fn a_shut_door_answers_503_to_waiting_and_new_requests() {
        let door = std::sync::Arc::new(Door::new());
        let waiting = tokio::spawn({
            let door = door.clone();
            async move { call(&door).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        door.shut().await;
        assert_eq!(waiting.await.unwrap().0, StatusCode::SERVICE_UNAVAILABLE);
        let r = door
            .router()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
    }
}
