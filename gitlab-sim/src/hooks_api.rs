//! Project hooks (`/projects/:id/hooks`) and group hooks (`/groups/:id/hooks`, Premium): create,
//! list, edit, delete, test deliveries, the delivery log and resends, with GitLab's shapes.
//! Both kinds share the code: a group hook is a hook whose owner is a group, and it receives the
//! events of every project of the group and its subgroups (`webhooks.rs`).
//!
//! Sources: doc/api/project_webhooks.md @55eb439f (FACTS §1.7) and doc/api/group_webhooks.md
//! @0c97aa58 (the group endpoints mirror the project ones: `group_id` instead of `project_id`,
//! `subgroup_events` and `member_events`; events and resend since 17.3/17.4).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, OriginalUri, Path, State as Ax};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value, json};

use crate::Shared;
use crate::access::Source;
use crate::access_api::Caller;
use crate::api::{ApiError, ApiResult, Params, Sh, bad_request, invalid, not_found, ok, paginate};
use crate::state::{EventKind, Hook, State};

/// The hook routes; the group ones only on a Premium sim (GitLab Free has no such route, so its
/// answer is the API's plain 404).
pub(crate) fn routes(premium: bool) -> Router<Arc<Shared>> {
    let r = Router::new()
        .route("/projects/{id}/hooks", get(list::<false>).post(create::<false>))
        .route("/projects/{id}/hooks/{hid}", get(show::<false>).put(edit::<false>).delete(delete::<false>))
        .route("/projects/{id}/hooks/{hid}/test/{trigger}", post(test::<false>))
        .route("/projects/{id}/hooks/{hid}/events", get(events::<false>))
        .route("/projects/{id}/hooks/{hid}/events/{eid}/resend", post(resend::<false>));
    if !premium {
        return r;
    }
    r.route("/groups/{id}/hooks", get(list::<true>).post(create::<true>))
        .route("/groups/{id}/hooks/{hid}", get(show::<true>).put(edit::<true>).delete(delete::<true>))
        .route("/groups/{id}/hooks/{hid}/test/{trigger}", post(test::<true>))
        .route("/groups/{id}/hooks/{hid}/events", get(events::<true>))
        .route("/groups/{id}/hooks/{hid}/events/{eid}/resend", post(resend::<true>))
}

/// The project (`GROUP` false) or group the route names.
fn owner<const GROUP: bool>(s: &Shared, key: &str) -> Result<Source, ApiError> {
    let state = s.lock();
    if GROUP {
        state.access.group(key).map(|g| Source::Group(g.id)).ok_or_else(|| not_found("Group"))
    } else {
        state.project(key).map(|p| Source::Project(p.id)).ok_or_else(|| not_found("Project"))
    }
}

fn hook_of(state: &State, owner: Source, hid: u64) -> Result<(), ApiError> {
    match state.hooks.get(&hid) {
        Some(h) if h.owner == owner => Ok(()),
        _ => Err(not_found("")),
    }
}

async fn list<const G: bool>(
    Ax(s): Sh,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    params: Params,
) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let state = s.lock();
    let items = state.hooks.values().filter(|h| h.owner == owner).map(|h| s.render.hook(h)).collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

async fn show<const G: bool>(Ax(s): Sh, Path((id, hid)): Path<(String, u64)>) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let state = s.lock();
    hook_of(&state, owner, hid)?;
    ok(StatusCode::OK, s.render.hook(&state.hooks[&hid]))
}

fn check_signing_token(token: &str) -> Result<(), ApiError> {
    use base64::Engine;
    let ok = token
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|key| key.len() == 32);
    if ok {
        Ok(())
    } else {
        // The exact message is not in our reference; GitLab requires the whsec_ form (FACTS §1.4).
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            json!({"message": {"signing_token": ["must be whsec_ followed by a base64 32-byte key"]}}),
        ))
    }
}

fn apply_params(h: &mut Hook, params: &Params) -> Result<(), ApiError> {
    if let Some(t) = params.string("signing_token") {
        check_signing_token(&t)?;
        h.signing_token = Some(t);
    }
    if let Some(t) = params.string("token") {
        h.token = Some(t).filter(|t| !t.is_empty());
    }
    for (key, flag) in [
        ("push_events", &mut h.push_events),
        ("tag_push_events", &mut h.tag_push_events),
        ("pipeline_events", &mut h.pipeline_events),
        ("job_events", &mut h.job_events),
        ("merge_requests_events", &mut h.merge_requests_events),
        ("enable_ssl_verification", &mut h.enable_ssl_verification),
    ] {
        if let Some(b) = params.bool(key) {
            *flag = b;
        }
    }
    if let Some(n) = params.string("name") {
        h.name = Some(n);
    }
    if let Some(d) = params.string("description") {
        h.description = Some(d);
    }
    Ok(())
}

fn check_url(raw: &str) -> Result<(), ApiError> {
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"message": {"url": ["is blocked: Only allowed schemes are http, https"]}}),
        )),
    }
}

async fn create<const G: bool>(Ax(s): Sh, Path(id): Path<String>, params: Params) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let url = params.required("url")?;
    check_url(&url)?;
    let mut hook = Hook {
        id: 0,
        owner,
        url,
        name: None,
        description: None,
        token: None,
        signing_token: None,
        // GitLab subscribes new hooks to pushes unless told otherwise.
        push_events: true,
        tag_push_events: false,
        pipeline_events: false,
        job_events: false,
        merge_requests_events: false,
        enable_ssl_verification: true,
        created_at: Utc::now(),
        recent_failures: 0,
        disabled_until: None,
        deliveries: Default::default(),
    };
    apply_params(&mut hook, &params)?;
    let mut state = s.lock();
    // GitLab.com's plan limits (FACTS §1.7, §4): 100 hooks a project, 50 a group; over them the
    // model's limit validation fails and `save_hook` renders it with 422
    // (lib/api/helpers/web_hooks_helpers.rb; message as in spec/models/hooks/project_hook_spec.rb).
    let (limit, what) = if G { (50, "group hooks") } else { (100, "project hooks") };
    if state.hooks.values().filter(|h| h.owner == owner).count() >= limit {
        let message = format!("Maximum number of {what} ({limit}) exceeded");
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": {"base": [message]}})));
    }
    state.last_id.hook += 1;
    hook.id = state.last_id.hook;
    let body = s.render.hook(&hook);
    state.hooks.insert(hook.id, hook);
    ok(StatusCode::CREATED, body)
}

async fn edit<const G: bool>(Ax(s): Sh, Path((id, hid)): Path<(String, u64)>, params: Params) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let url = params.required("url")?;
    check_url(&url)?;
    let mut state = s.lock();
    hook_of(&state, owner, hid)?;
    let hook = state.hooks.get_mut(&hid).expect("checked");
    // GitLab resets the secret token when the URL changes (FACTS §1.4).
    if hook.url != url {
        hook.token = None;
    }
    hook.url = url;
    apply_params(hook, &params)?;
    ok(StatusCode::OK, s.render.hook(&state.hooks[&hid]))
}

async fn delete<const G: bool>(Ax(s): Sh, Path((id, hid)): Path<(String, u64)>) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let mut state = s.lock();
    hook_of(&state, owner, hid)?;
    state.hooks.remove(&hid);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sends a test delivery now, even to a disabled hook; a 2xx re-enables it. The payload is built
/// from the latest data of the hook's project (for a group hook: of the group's projects). How
/// GitLab builds test payloads is not established (FACTS §1.6).
async fn test<const G: bool>(Ax(s): Sh, Path((id, hid, trigger)): Path<(String, u64, String)>) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let (kind, body) = {
        let state = s.lock();
        hook_of(&state, owner, hid)?;
        let covers = |project_id: u64| match owner {
            Source::Project(p) => p == project_id,
            Source::Group(g) => state
                .projects
                .iter()
                .find(|p| p.id == project_id)
                .is_some_and(|p| state.access.is_within(p.group_id, g)),
        };
        let latest_pipeline = state.pipelines.values().rev().find(|p| covers(p.project_id));
        let payloads: &dyn crate::state::Payloads = &s.render;
        match trigger.as_str() {
            "pipeline_events" => match latest_pipeline {
                Some(p) => (EventKind::Pipeline, payloads.pipeline_hook(&state, p)),
                None => return Err(bad_request("Ensure the project has CI pipelines.")),
            },
            "job_events" => match latest_pipeline.and_then(|p| p.jobs.last()).and_then(|j| state.jobs.get(j)) {
                Some(j) => (EventKind::Job, payloads.job_hook(&state, j)),
                None => return Err(bad_request("Ensure the project has CI jobs.")),
            },
            "merge_requests_events" => match state.merge_requests.values().rev().find(|m| covers(m.project_id)) {
                Some(m) => (EventKind::MergeRequest, s.render.merge_request_hook(&state, m, "open")),
                None => return Err(bad_request("Ensure the project has merge requests.")),
            },
            "push_events" => match state.projects.iter().find(|p| covers(p.id)) {
                Some(p) => {
                    let zeros = "0".repeat(40);
                    (EventKind::Push, s.render.push_hook(p, &p.default_branch, &zeros, &zeros, &[], 0))
                }
                None => return Err(bad_request("Ensure the project has commits.")),
            },
            _ => return Err(bad_request("trigger does not have a valid value")),
        }
    };
    let bytes = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
    crate::webhooks::deliver(s.clone(), hid, kind, bytes, crate::webhooks::uuid(), true).await;
    ok(StatusCode::CREATED, json!({"message": "201 Created"}))
}

/// Rack 3's `HTTP_STATUS_CODES`: the codes GitLab's `status` filter accepts besides the categories.
const RACK_STATUS_CODES: &[u16] = &[
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400,
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 425, 426,
    428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 511,
];

/// Whether a log entry's `response_status` matches one `status` filter value, as
/// `WebHooks::WebHookLogsFinder#string_filter_to_code` maps them: `successful` is 200-299,
/// `client_failure` 400-499, `server_failure` 500-599 *and* `internal error` (no answer at all);
/// a code matches itself.
fn status_matches(filter: &str, logged: &str) -> bool {
    let code = logged.parse::<u16>().ok();
    match filter {
        "successful" => code.is_some_and(|c| (200..300).contains(&c)),
        "client_failure" => code.is_some_and(|c| (400..500).contains(&c)),
        "server_failure" => code.is_some_and(|c| (500..600).contains(&c)) || logged == "internal error",
        exact => exact == logged,
    }
}

/// `GET /projects/:id/hooks/:hook_id/events` and `GET /groups/:id/hooks/:hook_id/events`
/// (`lib/api/hooks/events.rb`): the past 7 days from the start of the day (`WebHookLog.recent(7)`),
/// newest first; `status` is a list (comma-separated or `status[]=`) of codes or categories;
/// `per_page` is 1-20 (default 20), anything else is a 400.
async fn events<const G: bool>(
    Ax(s): Sh,
    Path((id, hid)): Path<(String, u64)>,
    OriginalUri(uri): OriginalUri,
    params: Params,
) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    if let Some(per_page) = params.string("per_page")
        && !per_page.parse::<u32>().is_ok_and(|n| (1..=20).contains(&n))
    {
        return Err(invalid("per_page"));
    }
    let filters: Vec<String> = match params.0.get("status") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect(),
        Some(Value::String(list)) => list.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect(),
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(_) => return Err(invalid("status")),
    };
    let valid = |f: &str| {
        matches!(f, "successful" | "client_failure" | "server_failure")
            || f.parse::<u16>().is_ok_and(|c| RACK_STATUS_CODES.contains(&c))
    };
    if !filters.iter().all(|f| valid(f)) {
        return Err(invalid("status"));
    }
    let since = (Utc::now() - chrono::Duration::days(7)).date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let state = s.lock();
    hook_of(&state, owner, hid)?;
    let mut logs: Vec<&crate::state::DeliveryLog> = state.hooks[&hid]
        .deliveries
        .iter()
        .filter(|d| since.is_none_or(|t| d.created_at >= t))
        .filter(|d| filters.is_empty() || filters.iter().any(|f| status_matches(f, &d.response_status)))
        .collect();
    logs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let items = logs
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "url": d.url, "trigger": d.trigger, "request_headers": d.request_headers,
                "request_data": d.request_data, "response_headers": {}, "response_body": d.response_body,
                "execution_duration": d.execution_duration, "response_status": d.response_status
            })
        })
        .collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

/// `POST /projects/:id/hooks/:hook_id/events/:hook_event_id/resend` (and the group one;
/// `lib/api/hooks/resend_hook.rb`, `WebHooks::Events::ResendService`):
/// - rate limited first (`web_hook_event_resend`: 5 per minute, scoped to the hook's project (or
///   group) and the user; the docs say "per hook and user", the code scopes by project): 429
///   `{"message":{"error":"This endpoint has been requested too many times. Try again later."}}`
///   with `Retry-After: 60` (the limit's interval, as `too_many_requests!` sets it);
/// - a log entry of another hook, or none: 404 `{"message":"404 Not found"}`;
/// - the hook's URL changed since: 422 with GitLab's message;
/// - a disabled hook: not sent (`WebHookService` is not forced), 422 `{"message":"Hook disabled"}`;
/// - sent, with an answer: 201 `{"response_status": <code>}`; sent with no answer (timeout,
///   connection failure): logged as `internal error`, 422 with the error's text.
async fn resend<const G: bool>(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path((id, hid, eid)): Path<(String, u64, u64)>,
) -> ApiResult {
    let owner = owner::<G>(&s, &id)?;
    let original = {
        let mut state = s.lock();
        hook_of(&state, owner, hid)?;
        let window = state.resend_limits.entry((owner, caller.user_id)).or_default();
        if !window.allow(std::time::Instant::now(), 5, std::time::Duration::from_secs(60)) {
            let body =
                json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}});
            return Ok((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "60")], axum::Json(body)).into_response());
        }
        let hook = &state.hooks[&hid];
        let original = hook
            .deliveries
            .iter()
            .find(|d| d.id == eid)
            .cloned()
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})))?;
        if original.url != hook.url {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "The hook URL has changed, and this log entry cannot be retried"}),
            ));
        }
        original
    };
    match crate::webhooks::resend(s.clone(), hid, &original).await {
        crate::webhooks::Outcome::Answered(code) => ok(StatusCode::CREATED, json!({"response_status": code})),
        crate::webhooks::Outcome::NotSent => {
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Hook disabled"})))
        }
        crate::webhooks::Outcome::Failed(why) => {
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": why})))
        }
    }
}
