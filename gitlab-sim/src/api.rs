//! The REST API v4 subset, with GitLab's status codes, error bodies and pagination headers.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, FromRequest, OriginalUri, Path, Request, State as Ax};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, Utc};
use cloudci_gitlab::types::{PipelineVariable, Status, VariableType};
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::access_api::Caller;
use crate::git::MergeOutcome;
use crate::state::{Effects, EventKind, Job, MergeRequest, Outgoing};

pub(crate) type Sh = Ax<Arc<Shared>>;

/// An error answer: GitLab's status and JSON body.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, json!({"message": format!("404 {what} Not Found")}))
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, json!({"message": message.into()}))
}

/// Grape's answer to a missing required parameter. Not confirmed against GitLab in our reference
/// (FACTS §3.7); it is Grape's default shape.
pub(crate) fn missing(param: &str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, json!({"error": format!("{param} is missing")}))
}

fn forbidden(reason: &str) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, json!({"message": format!("403 Forbidden - {reason}")}))
}

pub(crate) fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// Query string and body (JSON or form) merged into one map, as Grape presents parameters.
pub(crate) struct Params(pub(crate) Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut map = Map::new();
        if let Some(q) = req.uri().query() {
            add_form_pairs(&mut map, q.as_bytes());
        }
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = Bytes::from_request(req, state).await.map_err(|e| bad_request(e.to_string()))?;
        if is_json && !body.is_empty() {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(obj)) => map.extend(obj),
                Ok(_) => return Err(bad_request("400 Bad request - the body must be a JSON object")),
                Err(e) => return Err(bad_request(format!("400 Bad request - {e}"))),
            }
        } else if !body.is_empty() {
            add_form_pairs(&mut map, &body);
        }
        Ok(Params(map))
    }
}

/// Form pairs; `key[]` collects into an array, `a[b]` into an object.
fn add_form_pairs(map: &mut Map<String, Value>, raw: &[u8]) {
    for (k, v) in url::form_urlencoded::parse(raw) {
        let (k, v) = (k.into_owned(), Value::String(v.into_owned()));
        if let Some(base) = k.strip_suffix("[]") {
            match map.entry(base.to_owned()).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(items) => items.push(v),
                other => *other = Value::Array(vec![v]),
            }
        } else if let Some((base, rest)) = k.split_once('[') {
            let key = rest.trim_end_matches(']').to_owned();
            if let Value::Object(obj) = map.entry(base.to_owned()).or_insert_with(|| Value::Object(Map::new())) {
                obj.insert(key, v);
            }
        } else {
            map.insert(k, v);
        }
    }
}

impl Params {
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    pub(crate) fn string(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub(crate) fn required(&self, key: &str) -> Result<String, ApiError> {
        self.string(key).filter(|s| !s.is_empty()).ok_or_else(|| missing(key))
    }

    /// Grape's boolean coercion: `true`, `"true"`, `"1"`; `null` is false (FACTS §3.1).
    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => Some(matches!(s.as_str(), "true" | "1" | "yes")),
            Value::Number(n) => Some(n.as_i64() == Some(1)),
            Value::Null => Some(false),
            _ => None,
        }
    }

    fn usize(&self, key: &str) -> Option<usize> {
        self.string(key)?.parse().ok()
    }
}

/// Offset pagination as GitLab does it: `page`/`per_page` (default 20, max 100), `Link` with
/// prev/next/first/last, `x-page`, `x-per-page`, `x-next-page`, `x-prev-page`, and `x-total` and
/// `x-total-pages` (and `rel="last"`) only up to 10,000 items.
pub(crate) fn paginate(uri: &Uri, params: &Params, base: &str, items: Vec<Value>) -> Response {
    let per_page = params.usize("per_page").unwrap_or(20).clamp(1, 100);
    let page = params.usize("page").unwrap_or(1).max(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut resp = axum::Json(Value::Array(slice)).into_response();
    let link_for = |p: usize| {
        let mut url = url::Url::parse(&format!("{base}{}", uri.path())).expect("a valid URL");
        let kept: Vec<(String, String)> =
            uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in kept.iter().filter(|(k, _)| k != "page" && k != "per_page") {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("page", &p.to_string()).append_pair("per_page", &per_page.to_string());
        }
        url.to_string()
    };
    let big = total > 10_000;
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", link_for(page - 1)));
    }
    if page < pages {
        links.push(format!("<{}>; rel=\"next\"", link_for(page + 1)));
    }
    links.push(format!("<{}>; rel=\"first\"", link_for(1)));
    if !big {
        links.push(format!("<{}>; rel=\"last\"", link_for(pages)));
    }
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("link", links.join(", "));
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set("x-next-page", if page < pages { (page + 1).to_string() } else { String::new() });
    set("x-prev-page", if page > 1 { (page - 1).to_string() } else { String::new() });
    if !big {
        set("x-total", total.to_string());
        set("x-total-pages", pages.to_string());
    }
    resp
}

/// Rejects requests without a known token (and tells the handlers who is asking); injects API
/// faults.
async fn guard(Ax(shared): Sh, headers: HeaderMap, uri: Uri, mut req: Request, next: Next) -> Response {
    let query_token = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "private_token").map(|(_, v)| v.into_owned())
    });
    let given = headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .or(query_token);
    let caller = given.as_deref().and_then(|token| {
        let state = shared.lock();
        state.access.user_by_token(token).map(|u| Caller { user_id: u.id, admin: u.admin })
    });
    let Some(caller) = caller else {
        return ApiError(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"})).into_response();
    };
    req.extensions_mut().insert(caller);
    let faults = &shared.faults;
    if faults.chance(faults.spec.api_429) {
        // Rack::Attack's throttle answers in plain text (FACTS §3.6).
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1"), ("content-type", "text/plain")],
            "Retry later\n",
        )
            .into_response();
    }
    if faults.chance(faults.spec.api_5xx) {
        return (StatusCode::BAD_GATEWAY, [("content-type", "text/html")], "<html><body>502 Bad Gateway</body></html>")
            .into_response();
    }
    let is_post = req.method() == axum::http::Method::POST;
    let resp = next.run(req).await;
    if is_post && resp.status().is_success() && faults.chance(faults.spec.api_5xx_after) {
        return (StatusCode::BAD_GATEWAY, [("content-type", "text/html")], "<html><body>502 Bad Gateway</body></html>")
            .into_response();
    }
    resp
}

async fn fallback() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}))
}

/// The API's routes, under `/api/v4`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/version", get(version))
        .route("/metadata", get(version))
        .route("/projects/{id}", get(project).put(crate::access_api::edit_project))
        .route("/projects/{id}/repository/branches", get(branches))
        .route("/projects/{id}/repository/branches/{branch}", get(branch))
        .route("/projects/{id}/repository/archive", get(archive_tar_gz))
        .route("/projects/{id}/repository/archive.tar.gz", get(archive_tar_gz))
        .route("/projects/{id}/repository/archive.tar", get(archive_tar))
        .route("/projects/{id}/repository/archive.zip", get(archive_zip))
        .route("/projects/{id}/pipeline", post(create_pipeline))
        .route("/projects/{id}/pipelines", get(list_pipelines))
        .route("/projects/{id}/pipelines/{pid}", get(get_pipeline))
        .route("/projects/{id}/pipelines/{pid}/cancel", post(cancel_pipeline))
        .route("/projects/{id}/pipelines/{pid}/retry", post(retry_pipeline))
        .route("/projects/{id}/pipelines/{pid}/variables", get(pipeline_variables))
        .route("/projects/{id}/pipelines/{pid}/jobs", get(pipeline_jobs))
        .route("/projects/{id}/pipelines/{pid}/bridges", get(pipeline_bridges))
        .route("/projects/{id}/ci/lint", post(ci_lint))
        .route("/projects/{id}/jobs/{jid}", get(get_job))
        .route("/projects/{id}/jobs/{jid}/play", post(play_job))
        .route("/projects/{id}/jobs/{jid}/retry", post(retry_job))
        .route("/projects/{id}/jobs/{jid}/cancel", post(cancel_job))
        .route("/projects/{id}/jobs/{jid}/trace", get(job_trace))
        .route("/projects/{id}/jobs/{jid}/artifacts", get(job_artifacts))
        .route("/projects/{id}/merge_requests", get(list_mrs).post(create_mr))
        .route("/projects/{id}/merge_requests/{iid}", get(get_mr))
        .route("/projects/{id}/merge_requests/{iid}/merge", put(merge_mr))
        .route("/projects/{id}/merge_requests/{iid}/cancel_merge_when_pipeline_succeeds", post(cancel_auto_merge))
        .merge(crate::hooks_api::routes(shared.premium))
        .merge(crate::access_api::routes())
        .fallback(fallback)
        // Innermost: refusals are counted and compressed like any answer.
        .route_layer(middleware::from_fn_with_state(shared.clone(), crate::access_api::authorize))
        // Inside the count, so compressed answers count as sent.
        .route_layer(middleware::from_fn(crate::wire::compress))
        .route_layer(middleware::from_fn_with_state(shared.counter.clone(), crate::wire::count))
        .layer(middleware::from_fn_with_state(shared.clone(), guard));
    let counter = shared.counter.clone();
    // Sim-only, like `/-/sim/requests`: what the per-namespace webhook limit dropped (GitLab only
    // writes it to its auth log). Product code never calls it.
    let dropped = Router::new()
        .route(
            "/-/sim/hook-rate-limited",
            get(|Ax(s): Sh| async move { axum::Json(s.lock().hook_rate_limited.clone()) }),
        )
        .with_state(shared.clone());
    Router::new()
        .nest("/api/v4", api.with_state(shared))
        .merge(crate::wire::router(counter))
        .merge(dropped)
        .fallback(fallback)
}

async fn version(Ax(s): Sh) -> ApiResult {
    ok(StatusCode::OK, s.render.version())
}

fn project_id(s: &Shared, key: &str) -> Result<u64, ApiError> {
    s.lock().project(key).map(|p| p.id).ok_or_else(|| not_found("Project"))
}

async fn project(Ax(s): Sh, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult {
    let state = s.lock();
    let p = state.project(&id).ok_or_else(|| not_found("Project"))?;
    let mut body = s.render.project(p);
    body["permissions"] = crate::access_api::permissions(&state, caller, p.id, p.group_id);
    ok(StatusCode::OK, body)
}

async fn branches(Ax(s): Sh, Path(id): Path<String>, OriginalUri(uri): OriginalUri, params: Params) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let repo = s.lock().projects[idx(pid)].repo.clone();
    let mut items = Vec::new();
    for (name, sha) in repo.branches().await.map_err(|e| internal(&e))? {
        let commit = repo.commit(&sha).await.map_err(|e| internal(&e))?;
        items.push(s.render.branch(&s.lock().projects[idx(pid)], &name, &commit));
    }
    Ok(paginate(&uri, &params, &s.render.base, items))
}

async fn branch(Ax(s): Sh, Path((id, name)): Path<(String, String)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let repo = s.lock().projects[idx(pid)].repo.clone();
    let resolved = repo.resolve(&name).await.filter(|r| !r.tag).ok_or_else(|| not_found("Branch"))?;
    let commit = repo.commit(&resolved.sha).await.map_err(|e| internal(&e))?;
    ok(StatusCode::OK, s.render.branch(&s.lock().projects[idx(pid)], &name, &commit))
}

pub(crate) fn idx(project_id: u64) -> usize {
    usize::try_from(project_id.saturating_sub(1)).unwrap_or(0)
}

fn internal(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!("internal error: {e}");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"message": "500 Internal Server Error"}))
}

async fn archive_tar_gz(s: Sh, p: Path<String>, params: Params) -> ApiResult {
    archive(s, p, params, "tar.gz", "application/gzip").await
}

async fn archive_tar(s: Sh, p: Path<String>, params: Params) -> ApiResult {
    archive(s, p, params, "tar", "application/x-tar").await
}

async fn archive_zip(s: Sh, p: Path<String>, params: Params) -> ApiResult {
    archive(s, p, params, "zip", "application/zip").await
}

/// `GET /projects/:id/repository/archive[.format]?sha=`: streamed from `git archive`.
async fn archive(Ax(s): Sh, Path(id): Path<String>, params: Params, format: &str, mime: &'static str) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let (repo, name, default) = {
        let state = s.lock();
        let p = &state.projects[idx(pid)];
        (p.repo.clone(), p.name().to_owned(), p.default_branch.clone())
    };
    let wanted = params.string("sha").unwrap_or(default);
    let sha = match repo.resolve(&wanted).await {
        Some(r) => r.sha,
        None => repo.commit(&wanted).await.map(|c| c.sha).map_err(|_| not_found("Tree"))?,
    };
    let prefix = format!("{name}-{sha}");
    let mut child = repo.archive(&sha, format, &prefix).map_err(|e| internal(&e))?;
    let stdout = child.stdout.take().ok_or_else(|| internal(&"no archive output"))?;
    Response::builder()
        .header(header::CONTENT_TYPE, mime)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{prefix}.{format}\""))
        // The child is kept with the stream: dropping it (client gone) kills `git archive`.
        .body(streamed(stdout, child))
        .map_err(|e| internal(&e))
}

/// A response body read from `reader` in 64 KiB chunks; `keep` lives as long as the stream.
fn streamed<R, K>(reader: R, keep: K) -> Body
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    K: Send + 'static,
{
    let stream = futures_util::stream::unfold((reader, keep), |(mut reader, keep)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (reader, keep)))
            }
        }
    });
    Body::from_stream(stream)
}

fn parse_variables(params: &Params) -> Result<Vec<PipelineVariable>, ApiError> {
    let Some(raw) = params.0.get("variables") else { return Ok(Vec::new()) };
    let items: Vec<Value> = match raw {
        Value::Array(a) => a.clone(),
        // The form encoding `variables[0][key]=K` arrives as an object of objects.
        Value::Object(o) => o.values().cloned().collect(),
        _ => return Err(bad_request("variables is invalid")),
    };
    let mut vars = Vec::new();
    for item in items {
        let key = item.get("key").and_then(Value::as_str).ok_or_else(|| bad_request("variables[key] is missing"))?;
        let value = match item.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => String::new(),
        };
        let variable_type = match item.get("variable_type").and_then(Value::as_str) {
            None | Some("env_var") => VariableType::EnvVar,
            Some("file") => VariableType::File,
            Some(_) => return Err(bad_request("variables[variable_type] does not have a valid value")),
        };
        vars.push(PipelineVariable { key: key.to_owned(), value, variable_type: Some(variable_type) });
    }
    Ok(vars)
}

async fn create_pipeline(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let git_ref = params.required("ref")?;
    let variables = parse_variables(&params)?;
    if let Some(limit) = s.faults.spec.pipeline_limit {
        let mut state = s.lock();
        let now = std::time::Instant::now();
        let recent = state.recent_creations.entry(pid).or_default();
        while recent.front().is_some_and(|t| now.duration_since(*t) > std::time::Duration::from_secs(60)) {
            recent.pop_front();
        }
        if recent.len() >= limit as usize {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"message": "This endpoint has been requested too many times. Try again later."}),
            ));
        }
        recent.push_back(now);
    }
    let repo = s.lock().projects[idx(pid)].repo.clone();
    let resolved = repo
        .resolve(&git_ref)
        .await
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, json!({"message": {"base": ["Reference not found"]}})))?;
    crate::access_api::may_run_on(&s, caller, pid, &git_ref, resolved.tag)?;
    let yaml =
        repo.file_at(&resolved.sha, ".gitlab-ci.yml").await.map_err(|e| internal(&e))?.ok_or_else(|| {
            ApiError(StatusCode::BAD_REQUEST, json!({"message": {"base": ["Missing CI config file"]}}))
        })?;
    let inputs = match params.0.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad_request("inputs is invalid")),
    };
    let commit = repo.commit(&resolved.sha).await.map_err(|e| internal(&e))?;
    let (ctx, files) = crate::files::prepare(&s, pid, &git_ref, resolved.tag, &commit, "api", &variables, inputs);
    let config = match crate::files::compile(String::from_utf8_lossy(&yaml).into_owned(), ctx, files, true).await {
        Ok((_, Some(config))) => config,
        Ok((_, None)) => return Err(internal(&"no configuration")),
        Err(errors) => return Err(ApiError(StatusCode::BAD_REQUEST, json!({"message": {"base": errors}}))),
    };
    let mut state = s.lock();
    let (pipeline_id, fx) = state.create_pipeline(
        &s.render,
        pid,
        &git_ref,
        resolved.tag,
        commit,
        "api",
        variables,
        Arc::new(config),
        caller.user_id,
    );
    let body = s.render.pipeline(&state, &state.pipelines[&pipeline_id]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::CREATED, body)
}

fn time_param(params: &Params, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match params.str(key) {
        None => Ok(None),
        Some(raw) => cloudci_gitlab::types::Timestamp::parse(raw)
            .map(|t| Some(t.at()))
            .map_err(|_| bad_request(format!("{key} is invalid"))),
    }
}

/// Grape's answer to a parameter outside its `values:` (Grape's default shape, like [`missing`]).
pub(crate) fn invalid(param: &str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, json!({"error": format!("{param} does not have a valid value")}))
}

/// `GET /projects/:id/pipelines` with GitLab's filters (FACTS §3.2) and `order_by` (`id`, `status`,
/// `ref`, `updated_at`, `user_id`; default `id`) with `sort` (`asc`, `desc`; default `desc`). Ties
/// are broken by id in the same direction (GitLab leaves them to the database).
async fn list_pipelines(Ax(s): Sh, Path(id): Path<String>, OriginalUri(uri): OriginalUri, params: Params) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let updated_after = time_param(&params, "updated_after")?;
    let updated_before = time_param(&params, "updated_before")?;
    let created_after = time_param(&params, "created_after")?;
    let created_before = time_param(&params, "created_before")?;
    let order_by = params.str("order_by").unwrap_or("id");
    if !matches!(order_by, "id" | "status" | "ref" | "updated_at" | "user_id") {
        return Err(invalid("order_by"));
    }
    let descending = match params.str("sort").unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        _ => return Err(invalid("sort")),
    };
    let state = s.lock();
    let mut list: Vec<_> = state
        .pipelines
        .values()
        .filter(|p| p.project_id == pid)
        .filter(|p| params.str("ref").is_none_or(|r| p.git_ref == r))
        .filter(|p| params.str("sha").is_none_or(|x| p.sha == x))
        .filter(|p| params.str("status").is_none_or(|x| p.status.as_str() == x))
        .filter(|p| params.str("source").is_none_or(|x| p.source == x))
        .filter(|p| {
            params.str("username").is_none_or(|x| state.access.user(p.user_id).is_some_and(|u| u.username == x))
        })
        .filter(|p| updated_after.is_none_or(|t| p.updated_at > t))
        .filter(|p| updated_before.is_none_or(|t| p.updated_at < t))
        .filter(|p| created_after.is_none_or(|t| p.created_at > t))
        .filter(|p| created_before.is_none_or(|t| p.created_at < t))
        .filter(|p| match params.str("scope") {
            Some("running") => p.status == Status::Running,
            Some("pending") => p.status == Status::Pending,
            Some("finished") => p.status.is_completed(),
            _ => true,
        })
        .collect();
    list.sort_by(|a, b| {
        let primary = match order_by {
            "status" => a.status.as_str().cmp(b.status.as_str()),
            "ref" => a.git_ref.cmp(&b.git_ref),
            "updated_at" => a.updated_at.cmp(&b.updated_at),
            "user_id" => a.user_id.cmp(&b.user_id),
            _ => std::cmp::Ordering::Equal,
        };
        primary.then(a.id.cmp(&b.id))
    });
    if descending {
        list.reverse();
    }
    let items = list.iter().map(|p| s.render.pipeline_basic(&state, p)).collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

fn pipeline_of(state: &crate::state::State, pid: u64, id: u64) -> Result<(), ApiError> {
    match state.pipelines.get(&id) {
        Some(p) if p.project_id == pid => Ok(()),
        _ => Err(not_found("")),
    }
}

async fn get_pipeline(Ax(s): Sh, Path((id, pipeline)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    ok(StatusCode::OK, s.render.pipeline(&state, &state.pipelines[&pipeline]))
}

async fn pipeline_variables(Ax(s): Sh, Path((id, pipeline)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    ok(StatusCode::OK, serde_json::to_value(&state.pipelines[&pipeline].variables).unwrap_or_default())
}

/// Cancels everything not finished. GitLab answers 200 whatever the pipeline's state (FACTS §3.2).
async fn cancel_pipeline(Ax(s): Sh, Path((id, pipeline)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let mut state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    let ids: Vec<u64> = state.latest_jobs(pipeline).iter().filter(|j| !j.status.is_completed()).map(|j| j.id).collect();
    let mut fx = Effects::default();
    for job_id in ids {
        fx.merge(cancel_one(&s, &mut state, job_id));
    }
    fx.merge(state.refresh_pipeline_status(&s.render, pipeline));
    let body = s.render.pipeline(&state, &state.pipelines[&pipeline]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::OK, body)
}

/// Cancels one job: a running one is killed and ends `canceled` when its process is gone.
fn cancel_one(s: &Shared, state: &mut crate::state::State, job_id: u64) -> Effects {
    let Some(job) = state.jobs.get_mut(&job_id) else { return Effects::default() };
    if job.status == Status::Running {
        job.cancel_requested = true;
        let pgid = job.pgid;
        crate::kill_group(pgid);
        return state.set_job_status(&s.render, job_id, Status::Canceling);
    }
    state.set_job_status(&s.render, job_id, Status::Canceled)
}

/// Retries failed and canceled jobs (as new jobs) and re-opens skipped ones.
async fn retry_pipeline(Ax(s): Sh, Path((id, pipeline)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let mut state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    let latest: Vec<(u64, Status)> = state.latest_jobs(pipeline).iter().map(|j| (j.id, j.status.clone())).collect();
    let mut fx = Effects::default();
    for (job_id, status) in latest {
        match status {
            Status::Failed | Status::Canceled => {
                clone_job(&s, &mut state, job_id, &mut fx);
            }
            Status::Skipped => fx.merge(state.set_job_status(&s.render, job_id, Status::Created)),
            _ => {}
        }
    }
    fx.merge(state.advance(&s.render, pipeline));
    let body = s.render.pipeline(&state, &state.pipelines[&pipeline]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::CREATED, body)
}

/// Replaces job `old` by a new `created` attempt; returns the new id.
fn clone_job(s: &Shared, state: &mut crate::state::State, old: u64, fx: &mut Effects) -> u64 {
    state.clone_job(&s.render, old, fx)
}

async fn pipeline_jobs(
    Ax(s): Sh,
    Path((id, pipeline)): Path<(String, u64)>,
    OriginalUri(uri): OriginalUri,
    params: Params,
) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    let scopes: Vec<String> = match params.0.get("scope") {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let include_retried = params.bool("include_retried").unwrap_or(false);
    let mut jobs: Vec<&Job> = state.pipelines[&pipeline]
        .jobs
        .iter()
        .filter_map(|j| state.jobs.get(j))
        .filter(|j| include_retried || !j.retried)
        .filter(|j| !j.spec.is_bridge())
        .filter(|j| scopes.is_empty() || scopes.iter().any(|sc| sc == j.status.as_str()))
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    let items = jobs.iter().map(|j| s.render.job(&state, j)).collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

/// `GET /projects/:id/pipelines/:pipeline_id/bridges`: the trigger jobs, which the jobs list
/// leaves out.
async fn pipeline_bridges(
    Ax(s): Sh,
    Path((id, pipeline)): Path<(String, u64)>,
    OriginalUri(uri): OriginalUri,
    params: Params,
) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    pipeline_of(&state, pid, pipeline)?;
    let scopes: Vec<String> = match params.0.get("scope") {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let mut jobs: Vec<&Job> = state
        .latest_jobs(pipeline)
        .into_iter()
        .filter(|j| j.spec.is_bridge())
        .filter(|j| scopes.is_empty() || scopes.iter().any(|sc| sc == j.status.as_str()))
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    let items = jobs.iter().map(|j| s.render.bridge(&state, j)).collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

/// A job as lint lists it (`Gitlab::Ci::Lint` `build_job`).
fn lint_job(
    j: &crate::ci::JobSpec,
    only: Option<&crate::ci::jobs::Policy>,
    except: Option<&crate::ci::jobs::Policy>,
) -> Value {
    let policy = |p: Option<&crate::ci::jobs::Policy>| {
        p.map(|p| json!({"refs": p.refs, "variables": p.variables})).unwrap_or(Value::Null)
    };
    json!({
        "name": j.name, "stage": j.stage, "before_script": j.before_script, "script": j.script,
        "after_script": j.after_script, "tag_list": j.tags, "environment": j.environment,
        "when": j.when.as_str(), "allow_failure": j.allow_failure, "only": policy(only), "except": policy(except),
        "needs": j.needs.as_ref().map(|n| n.iter().map(|x| json!({"name": x})).collect::<Vec<_>>())
    })
}

/// `POST /projects/:id/ci/lint` (`content`, `dry_run`, `include_jobs`, `ref`), as GitLab's docs
/// describe it: a static check, or with `dry_run` a simulated pipeline creation for `ref`. GitLab
/// simulates a **push** pipeline (`Ci::CreatePipelineService#execute(:push, dry_run: true)`), so
/// the jobs listed are those a push would get, not an API pipeline.
async fn ci_lint(Ax(s): Sh, Path(id): Path<String>, params: Params) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let content = params.string("content").ok_or_else(|| missing("content"))?;
    let dry_run = params.bool("dry_run").unwrap_or(false);
    let include_jobs = params.bool("include_jobs").unwrap_or(false);
    let (repo, default_branch) = {
        let state = s.lock();
        let p = &state.projects[idx(pid)];
        (p.repo.clone(), p.default_branch.clone())
    };
    let git_ref = params.string("ref").filter(|r| !r.is_empty()).unwrap_or(default_branch);
    let Some(resolved) = repo.resolve(&git_ref).await else {
        return ok(
            StatusCode::OK,
            json!({"valid": false, "errors": ["Reference not found"], "warnings": [], "merged_yaml": null, "includes": null}),
        );
    };
    let commit = repo.commit(&resolved.sha).await.map_err(|e| internal(&e))?;
    let (ctx, files) = crate::files::prepare(&s, pid, &git_ref, resolved.tag, &commit, "push", &[], Map::new());
    let result = crate::files::compile(content, ctx, files, dry_run).await;
    let mut body = match &result {
        Ok((composed, config)) => {
            let includes: Vec<Value> = composed
                .includes
                .iter()
                .map(|i| {
                    let extra: Map<String, Value> =
                        i.extra.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
                    json!({"type": i.kind, "location": i.location, "blob": null, "raw": null, "extra": extra,
                        "context_project": i.context_project, "context_sha": i.context_sha})
                })
                .collect();
            let mut body = json!({
                "valid": true, "errors": [], "warnings": composed.warnings,
                "merged_yaml": composed.merged_yaml, "includes": includes
            });
            if include_jobs {
                let jobs: Vec<Value> = match config {
                    Some(config) => config.jobs.iter().map(|j| lint_job(j, None, None)).collect(),
                    None => {
                        composed.jobs.iter().map(|d| lint_job(&d.spec, d.only.as_ref(), d.except.as_ref())).collect()
                    }
                };
                body["jobs"] = Value::Array(jobs);
            }
            body
        }
        Err(errors) => json!({"valid": false, "errors": errors, "warnings": [], "merged_yaml": null, "includes": null}),
    };
    if include_jobs && body.get("jobs").is_none() {
        body["jobs"] = json!([]);
    }
    ok(StatusCode::OK, body)
}

fn job_of(state: &crate::state::State, pid: u64, id: u64) -> Result<(), ApiError> {
    match state.jobs.get(&id) {
        Some(j) if j.project_id == pid => Ok(()),
        _ => Err(not_found("")),
    }
}

async fn get_job(Ax(s): Sh, Path((id, job)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    job_of(&state, pid, job)?;
    ok(StatusCode::OK, s.render.job(&state, &state.jobs[&job]))
}

async fn play_job(Ax(s): Sh, Path((id, job)): Path<(String, u64)>, params: Params) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let vars = match params.0.get("job_variables_attributes") {
        Some(v) => parse_variables(&Params(Map::from_iter([("variables".to_owned(), v.clone())])))?,
        None => Vec::new(),
    };
    let mut state = s.lock();
    job_of(&state, pid, job)?;
    if state.jobs[&job].status != Status::Manual {
        return Err(forbidden("Job is not playable"));
    }
    state.jobs.get_mut(&job).expect("checked").play_variables = vars;
    let pipeline = state.jobs[&job].pipeline_id;
    let mut fx = state.set_job_status(&s.render, job, Status::Pending);
    fx.start.push(job);
    fx.merge(state.advance(&s.render, pipeline));
    let body = s.render.job(&state, &state.jobs[&job]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::OK, body)
}

async fn retry_job(Ax(s): Sh, Path((id, job)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let mut state = s.lock();
    job_of(&state, pid, job)?;
    let j = &state.jobs[&job];
    if !j.status.is_completed() || j.retried {
        return Err(forbidden("Job is not retryable"));
    }
    let pipeline = j.pipeline_id;
    let mut fx = Effects::default();
    let new_id = clone_job(&s, &mut state, job, &mut fx);
    // Jobs after it that were skipped get another chance.
    let skipped: Vec<u64> =
        state.latest_jobs(pipeline).iter().filter(|x| x.status == Status::Skipped).map(|x| x.id).collect();
    for sk in skipped {
        fx.merge(state.set_job_status(&s.render, sk, Status::Created));
    }
    fx.merge(state.advance(&s.render, pipeline));
    let body = s.render.job(&state, &state.jobs[&new_id]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::CREATED, body)
}

async fn cancel_job(Ax(s): Sh, Path((id, job)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let mut state = s.lock();
    job_of(&state, pid, job)?;
    let mut fx = Effects::default();
    if !state.jobs[&job].status.is_completed() {
        fx.merge(cancel_one(&s, &mut state, job));
        let pipeline = state.jobs[&job].pipeline_id;
        fx.merge(state.advance(&s.render, pipeline));
    }
    let body = s.render.job(&state, &state.jobs[&job]);
    drop(state);
    s.apply(fx);
    ok(StatusCode::CREATED, body)
}

/// The whole log as plain text. Like GitLab's API, `Range` is ignored.
async fn job_trace(Ax(s): Sh, Path((id, job)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    job_of(&state, pid, job)?;
    let trace = state.jobs[&job].trace.clone();
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain".to_owned()),
            (header::CONTENT_DISPOSITION, format!("infile; filename=\"{job}.log\"")),
        ],
        trace,
    )
        .into_response())
}

async fn job_artifacts(Ax(s): Sh, Path((id, job)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let artifact = {
        let state = s.lock();
        job_of(&state, pid, job)?;
        state.jobs[&job].artifact.clone()
    };
    let (path, size) = artifact.ok_or_else(|| not_found(""))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| internal(&e))?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_DISPOSITION, "attachment; filename=\"artifacts.zip\"")
        .body(streamed(file, ()))
        .map_err(|e| internal(&e))
}

async fn list_mrs(Ax(s): Sh, Path(id): Path<String>, OriginalUri(uri): OriginalUri, params: Params) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let state = s.lock();
    let mut list: Vec<&MergeRequest> = state
        .merge_requests
        .values()
        .filter(|m| m.project_id == pid)
        .filter(|m| params.str("source_branch").is_none_or(|b| m.source_branch == b))
        .filter(|m| params.str("target_branch").is_none_or(|b| m.target_branch == b))
        .filter(|m| params.str("state").is_none_or(|st| st == "all" || m.state == st))
        .collect();
    list.reverse();
    let items = list.iter().map(|m| s.render.merge_request(&state, m)).collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

fn mr_of(state: &crate::state::State, pid: u64, iid: u64) -> Result<u64, ApiError> {
    state
        .merge_requests
        .values()
        .find(|m| m.project_id == pid && m.iid == iid)
        .map(|m| m.id)
        .ok_or_else(|| not_found(""))
}

async fn create_mr(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let source = params.required("source_branch")?;
    let target = params.required("target_branch")?;
    let title = params.required("title")?;
    let repo = s.lock().projects[idx(pid)].repo.clone();
    // GitLab's exact wording for these two validation failures is not in our reference; the shape
    // (`message` with a list) follows its validation errors.
    let source_head = repo.resolve(&source).await.filter(|r| !r.tag).ok_or_else(|| {
        ApiError(StatusCode::BAD_REQUEST, json!({"message": [format!("Source branch \"{source}\" does not exist")]}))
    })?;
    repo.resolve(&target).await.filter(|r| !r.tag).ok_or_else(|| {
        ApiError(StatusCode::BAD_REQUEST, json!({"message": [format!("Target branch \"{target}\" does not exist")]}))
    })?;
    let last_commit = repo.commit(&source_head.sha).await.ok();
    let mut state = s.lock();
    if let Some(existing) = state
        .merge_requests
        .values()
        .find(|m| m.project_id == pid && m.source_branch == source && m.target_branch == target && m.state == "opened")
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            json!({"message": [format!("Another open merge request already exists for this source branch: !{}", existing.iid)]}),
        ));
    }
    state.last_id.merge_request += 1;
    let mr_id = state.last_id.merge_request;
    let project = &mut state.projects[idx(pid)];
    let iid = project.next_mr_iid;
    project.next_mr_iid += 1;
    let now = Utc::now();
    state.merge_requests.insert(
        mr_id,
        MergeRequest {
            id: mr_id,
            iid,
            project_id: pid,
            title,
            description: params.string("description").unwrap_or_default(),
            source_branch: source,
            target_branch: target,
            state: "opened".into(),
            auto_merge: false,
            remove_source_branch: params.bool("remove_source_branch").unwrap_or(false),
            sha: source_head.sha,
            merge_commit_sha: None,
            created_at: now,
            updated_at: now,
            merged_at: None,
            last_commit,
            author_id: caller.user_id,
            merge_user_id: None,
        },
    );
    let mr = &state.merge_requests[&mr_id];
    let body = s.render.merge_request(&state, mr);
    let hook = s.render.merge_request_hook(&state, mr, "open");
    drop(state);
    s.apply(Effects {
        events: vec![Outgoing { project_id: pid, kind: EventKind::MergeRequest, body: hook }],
        ..Effects::default()
    });
    ok(StatusCode::CREATED, body)
}

async fn get_mr(Ax(s): Sh, Path((id, iid)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    refresh_mr_sha(&s, pid, iid).await;
    let state = s.lock();
    let mr_id = mr_of(&state, pid, iid)?;
    ok(StatusCode::OK, s.render.merge_request(&state, &state.merge_requests[&mr_id]))
}

/// Brings an open merge request's `sha` up to its source branch's head.
async fn refresh_mr_sha(s: &Arc<Shared>, pid: u64, iid: u64) {
    let (repo, branch) = {
        let state = s.lock();
        let Ok(mr_id) = mr_of(&state, pid, iid) else { return };
        let mr = &state.merge_requests[&mr_id];
        if mr.state != "opened" {
            return;
        }
        (state.projects[idx(pid)].repo.clone(), mr.source_branch.clone())
    };
    if let Some(head) = repo.resolve(&branch).await {
        let commit = repo.commit(&head.sha).await.ok();
        let mut state = s.lock();
        if let Ok(mr_id) = mr_of(&state, pid, iid)
            && let Some(mr) = state.merge_requests.get_mut(&mr_id)
        {
            mr.sha = head.sha;
            if commit.is_some() {
                mr.last_commit = commit;
            }
        }
    }
}

/// Merges now, or sets auto-merge (`auto_merge`, or the deprecated `merge_when_pipeline_succeeds`).
async fn merge_mr(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path((id, iid)): Path<(String, u64)>,
    params: Params,
) -> ApiResult {
    let pid = project_id(&s, &id)?;
    refresh_mr_sha(&s, pid, iid).await;
    let auto =
        params.bool("auto_merge").unwrap_or(false) || params.bool("merge_when_pipeline_succeeds").unwrap_or(false);
    let (mr_id, repo, source, target, head_status) = {
        let state = s.lock();
        let mr_id = mr_of(&state, pid, iid)?;
        let mr = &state.merge_requests[&mr_id];
        if mr.state != "opened" {
            return Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "405 Method Not Allowed"})));
        }
        if let Some(sha) = params.str("sha")
            && sha != mr.sha
        {
            return Err(ApiError(StatusCode::CONFLICT, json!({"message": "SHA does not match HEAD of source branch"})));
        }
        let head = state
            .pipelines
            .values()
            .rev()
            .find(|p| p.project_id == pid && p.git_ref == mr.source_branch && p.sha == mr.sha)
            .map(|p| p.status.clone());
        (mr_id, state.projects[idx(pid)].repo.clone(), mr.source_branch.clone(), mr.target_branch.clone(), head)
    };
    if auto && head_status.as_ref().is_some_and(|st| !st.is_completed()) {
        let mut state = s.lock();
        let mr = state.merge_requests.get_mut(&mr_id).expect("exists");
        mr.auto_merge = true;
        mr.merge_user_id = Some(caller.user_id);
        mr.updated_at = Utc::now();
        let mr = &state.merge_requests[&mr_id];
        let body = s.render.merge_request(&state, mr);
        let hook = s.render.merge_request_hook(&state, mr, "update");
        drop(state);
        s.apply(Effects {
            events: vec![Outgoing { project_id: pid, kind: EventKind::MergeRequest, body: hook }],
            ..Effects::default()
        });
        return ok(StatusCode::OK, body);
    }
    if head_status.as_ref().is_some_and(|st| *st == Status::Failed || *st == Status::Canceled) && auto {
        return Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "405 Method Not Allowed"})));
    }
    let message = format!("Merge branch '{source}' into '{target}'\n\nSee merge request !{iid}");
    match repo.merge(&source, &target, &message).await.map_err(|e| internal(&e))? {
        MergeOutcome::Conflict => {
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Branch cannot be merged"})))
        }
        MergeOutcome::Merged(sha) => {
            let mut state = s.lock();
            let mr = state.merge_requests.get_mut(&mr_id).expect("exists");
            mr.state = "merged".into();
            mr.merge_commit_sha = Some(sha);
            mr.merged_at = Some(Utc::now());
            mr.updated_at = Utc::now();
            mr.auto_merge = auto;
            mr.merge_user_id = Some(caller.user_id);
            let mr = &state.merge_requests[&mr_id];
            let body = s.render.merge_request(&state, mr);
            let hook = s.render.merge_request_hook(&state, mr, "merge");
            drop(state);
            s.apply(Effects {
                events: vec![Outgoing { project_id: pid, kind: EventKind::MergeRequest, body: hook }],
                ..Effects::default()
            });
            ok(StatusCode::OK, body)
        }
    }
}

async fn cancel_auto_merge(Ax(s): Sh, Path((id, iid)): Path<(String, u64)>) -> ApiResult {
    let pid = project_id(&s, &id)?;
    let mut state = s.lock();
    let mr_id = mr_of(&state, pid, iid)?;
    let mr = state.merge_requests.get_mut(&mr_id).expect("exists");
    if mr.state != "opened" {
        return Err(ApiError(StatusCode::NOT_ACCEPTABLE, json!({"message": "406 Not Acceptable"})));
    }
    mr.auto_merge = false;
    mr.merge_user_id = None;
    let body = s.render.merge_request(&state, &state.merge_requests[&mr_id]);
    ok(StatusCode::CREATED, body)
}
