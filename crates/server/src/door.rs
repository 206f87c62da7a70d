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

use std::time::Duration;

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

    /// Makes new requests wait; returns once the requests in flight have finished, or
    /// after [`SHUTDOWN_GRACE`] (with a warning) if some have not.
    pub async fn close(&self) {
        self.finish(State::Closed).await;
    }

    /// Answers waiting and new requests 503; returns as [`Door::close`].
    pub async fn shut(&self) {
        self.finish(State::Shut).await;
    }

    async fn finish(&self, next: State) {
        let State::Open(_, in_flight) = self.state.send_replace(next) else {
            return;
        };
        in_flight.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                requests = in_flight.len(),
                "requests still in flight after the shutdown grace period; going on without them"
            );
        }
    }
}

/// Waits for the door to be open, then hands `req` to its router.
async fn pass(mut state: watch::Receiver<State>, req: Request) -> Response {
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
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Some(held)));
        let slow = Router::new().route(
            "/",
            get(move || {
                let held = held.lock().unwrap().take();
                async move {
                    if let Some(h) = held {
                        let _ = h.await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        closing.await.unwrap();
        assert_eq!(in_flight.await.unwrap().1, "slow");
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
