//! The API of who is who: `GET /user`, `GET /users/:id`, `GET /groups/:id`, the members endpoints
//! of projects and groups (list, get, `all` with inherited members, add, edit, remove), and
//! `PUT /projects/:id` for visibility and public pipelines; plus the middleware that applies the
//! permission rules of `access.rs` to every project and group route before its handler runs.
//!
//! Shapes: the member object is the user's basic fields plus `access_level`, `created_at`,
//! `created_by` (when someone added them), `expires_at` and `membership_state`, as GitLab.com
//! answers (keys seen in a recorded gitlab.com answer, not in GitLab's docs; the docs' examples
//! predate `created_by` and `membership_state`). Error answers: a non-member is `find_by!`'s
//! `{"message":"404 Not found"}` (lib/api/members.rb); an unknown user `404 User Not Found`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, MatchedPath, OriginalUri, Path, RawPathParams, Request, State as Ax};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde_json::{Value, json};

use crate::Shared;
use crate::access::{Ability, Denied, Membership, Source, User, Visibility, check_group, check_project, level};
use crate::api::{ApiError, ApiResult, Params, Sh, invalid, missing, not_found, ok, paginate};
use crate::render::iso_text;
use crate::state::State;

/// The authenticated user of a request, put there by the API's guard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// User id.
    pub(crate) user_id: u64,
    /// An administrator passes every check.
    pub(crate) admin: bool,
}

/// The routes of this module.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/user", get(current_user))
        .route("/users/{uid}", get(user))
        .route("/groups/{id}", get(group))
        .route("/projects/{id}/members", get(list::<false, false>).post(add::<false>))
        .route("/projects/{id}/members/all", get(list::<false, true>))
        .route("/projects/{id}/members/all/{uid}", get(show::<false, true>))
        .route("/projects/{id}/members/{uid}", get(show::<false, false>).put(edit::<false>).delete(remove::<false>))
        .route("/groups/{id}/members", get(list::<true, false>).post(add::<true>))
        .route("/groups/{id}/members/all", get(list::<true, true>))
        .route("/groups/{id}/members/all/{uid}", get(show::<true, true>))
        .route("/groups/{id}/members/{uid}", get(show::<true, false>).put(edit::<true>).delete(remove::<true>))
}

fn refusal(denied: Denied, what: &str) -> Response {
    let (status, message) = match denied {
        Denied::NotFound => (StatusCode::NOT_FOUND, format!("404 {what} Not Found")),
        Denied::Forbidden => (StatusCode::FORBIDDEN, "403 Forbidden".to_owned()),
        Denied::Unauthorized => (StatusCode::UNAUTHORIZED, "401 Unauthorized".to_owned()),
    };
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// Applies the permission rules to a project or group route: a project the caller may not see
/// is `404 Project Not Found` whatever the route, a refused action `403 Forbidden` (`401` for
/// merging, as GitLab answers). Routes of things that do not exist pass on, for their handler's
/// 404.
pub(crate) async fn authorize(
    Ax(s): Sh,
    matched: MatchedPath,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().copied() else { return next.run(req).await };
    let params: HashMap<String, String> =
        params.map(|p| p.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()).unwrap_or_default();
    let route = matched.as_str().strip_prefix("/api/v4").unwrap_or(matched.as_str()).to_owned();
    let decision = {
        let state = s.lock();
        decide(&state, caller, &route, req.method(), &params)
    };
    match decision {
        Ok(()) => next.run(req).await,
        Err((denied, what)) => refusal(denied, what),
    }
}

fn decide(
    state: &State,
    caller: Caller,
    route: &str,
    method: &Method,
    params: &HashMap<String, String>,
) -> Result<(), (Denied, &'static str)> {
    let key = params.get("id").map(String::as_str).unwrap_or("");
    if let Some(rest) = route.strip_prefix("/projects/{id}") {
        let Some(p) = state.project(key) else { return Ok(()) };
        let level = state.access.level(Source::Project(p.id), p.group_id, caller.user_id);
        let pipeline_protected = |id: Option<u64>| {
            id.and_then(|id| state.pipelines.get(&id)).is_some_and(|pl| p.is_protected(&pl.git_ref, pl.tag))
        };
        let num = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
        let get = *method == Method::GET;
        let ability = match rest {
            "" if get => Ability::ReadProject,
            "" => Ability::AdminProject,
            "/pipeline" | "/ci/lint" => Ability::CreatePipeline,
            "/pipelines/{pid}/variables" => Ability::ReadPipelineVariables,
            "/pipelines/{pid}/cancel" | "/pipelines/{pid}/retry" => {
                Ability::UpdatePipeline { protected: pipeline_protected(num("pid")) }
            }
            "/jobs/{jid}/play" | "/jobs/{jid}/retry" | "/jobs/{jid}/cancel" => {
                let pipeline = num("jid").and_then(|j| state.jobs.get(&j)).map(|j| j.pipeline_id);
                Ability::UpdatePipeline { protected: pipeline_protected(pipeline) }
            }
            "/merge_requests" if get => Ability::ReadMergeRequest,
            "/merge_requests" => Ability::CreateMergeRequest,
            "/merge_requests/{iid}/merge" | "/merge_requests/{iid}/cancel_merge_when_pipeline_succeeds" => {
                let target = num("iid")
                    .and_then(|iid| state.merge_requests.values().find(|m| m.project_id == p.id && m.iid == iid));
                Ability::Merge { protected: target.is_some_and(|m| p.is_protected(&m.target_branch, false)) }
            }
            r if r.starts_with("/repository") => Ability::DownloadCode,
            r if r.starts_with("/pipelines") || r.starts_with("/jobs") => Ability::ReadPipeline,
            r if r.starts_with("/merge_requests") => Ability::ReadMergeRequest,
            r if r.starts_with("/hooks") => Ability::AdminProject,
            r if r.starts_with("/members") && get => Ability::ReadProject,
            r if r.starts_with("/members") => Ability::AdminProject,
            _ => Ability::ReadProject,
        };
        return check_project(p.facts(), caller.admin, level, ability).map_err(|d| (d, "Project"));
    }
    if let Some(rest) = route.strip_prefix("/groups/{id}") {
        let Some(g) = state.access.group(key) else { return Ok(()) };
        let level = state.access.level(Source::Group(g.id), 0, caller.user_id);
        let ability = match rest {
            r if r.starts_with("/members") && *method != Method::GET => Ability::AdminGroup,
            r if r.starts_with("/hooks") => Ability::AdminGroup,
            _ => Ability::ReadGroup,
        };
        let in_a_project = state.projects.iter().any(|p| {
            state.access.is_within(p.group_id, g.id)
                && state.access.members.contains_key(&(Source::Project(p.id), caller.user_id))
        });
        return check_group(g.visibility, caller.admin, level, in_a_project, ability).map_err(|d| (d, "Group"));
    }
    Ok(())
}

/// A user's basic fields (`UserBasic`), as members and embedded users show them.
pub(crate) fn user_basic(base: &str, u: &User) -> Value {
    json!({
        "id": u.id, "username": u.username, "name": u.name, "state": "active", "locked": false,
        "avatar_url": null, "web_url": format!("{base}/{}", u.username)
    })
}

/// `GET /users/:id`: the public profile. Keys: those of `GET /user`'s sample that are not the
/// user's own settings (inferred; no sample of this endpoint in our reference).
fn user_public(base: &str, u: &User) -> Value {
    let mut v = user_basic(base, u);
    v.as_object_mut().expect("an object").extend(
        json!({
            "created_at": iso_text(u.created_at), "bio": "", "location": null, "public_email": null, "skype": "",
            "linkedin": "", "twitter": "", "discord": "", "website_url": "", "organization": "", "job_title": "",
            "pronouns": null, "bot": false, "work_information": null, "followers": 0, "following": 0,
            "local_time": null
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    v
}

/// `GET /user`: the token's user, with every key of `samples/api-user.json`.
pub(crate) fn user_private(base: &str, u: &User) -> Value {
    let email = if u.admin { "admin@example.com".to_owned() } else { format!("{}@example.com", u.username) };
    let mut v = user_public(base, u);
    v.as_object_mut().expect("an object").extend(
        json!({
            "email": email, "last_sign_in_at": null, "confirmed_at": iso_text(u.created_at), "theme_id": 1,
            "last_activity_on": null, "color_scheme_id": 1, "projects_limit": 100000, "current_sign_in_at": null,
            "identities": [], "can_create_group": true, "can_create_project": true, "two_factor_enabled": false,
            "external": false, "private_profile": false, "commit_email": email
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    v
}

async fn current_user(Ax(s): Sh, Extension(caller): Extension<Caller>) -> ApiResult {
    let state = s.lock();
    let u = state.access.user(caller.user_id).ok_or_else(|| not_found("User"))?;
    ok(StatusCode::OK, user_private(&s.render.base, u))
}

fn user_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, json!({"error": "user_id is invalid"})))
}

async fn user(Ax(s): Sh, Path(uid): Path<String>) -> ApiResult {
    let uid = raw_id(&uid)?;
    let state = s.lock();
    let u = state.access.user(uid).ok_or_else(|| not_found("User"))?;
    ok(StatusCode::OK, user_public(&s.render.base, u))
}

fn raw_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, json!({"error": "id is invalid"})))
}

/// `GET /groups/:id`. No sample of a group in our reference: the keys are those of
/// doc/api/groups.md's "Get a single group" example that the sim has values for.
async fn group(Ax(s): Sh, Path(id): Path<String>) -> ApiResult {
    let state = s.lock();
    let g = state.access.group(&id).ok_or_else(|| not_found("Group"))?;
    let full_name = g.path.replace('/', " / ");
    ok(
        StatusCode::OK,
        json!({
            "id": g.id, "web_url": format!("{}/groups/{}", s.render.base, g.path), "name": g.name(),
            "path": g.name(), "description": "", "visibility": g.visibility.as_str(), "full_name": full_name,
            "full_path": g.path, "parent_id": g.parent, "avatar_url": null, "created_at": iso_text(g.created_at),
            "default_branch_protection": 2, "request_access_enabled": true, "projects": [], "shared_projects": []
        }),
    )
}

/// `PUT /projects/:id` with `visibility` (the project's Owner) and `public_jobs` (Maintainer; the
/// deprecated `public_builds` too). Other attributes are accepted and ignored.
pub(crate) async fn edit_project(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let mut state = s.lock();
    let pid = state.project(&id).map(|p| p.id).ok_or_else(|| not_found("Project"))?;
    let visibility = match params.string("visibility") {
        None => None,
        Some(v) => Some(Visibility::parse(&v).ok_or_else(|| invalid("visibility"))?),
    };
    let project = &state.projects[crate::api::idx(pid)];
    if visibility.is_some_and(|v| v != project.visibility) {
        let level = state.access.level(Source::Project(pid), project.group_id, caller.user_id);
        if check_project(project.facts(), caller.admin, level, Ability::OwnProject).is_err() {
            return Err(ApiError(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"})));
        }
    }
    let public_jobs = params.bool("public_jobs").or_else(|| params.bool("public_builds"));
    let project = &mut state.projects[crate::api::idx(pid)];
    if let Some(v) = visibility {
        project.visibility = v;
    }
    if let Some(b) = public_jobs {
        project.public_jobs = b;
    }
    let body = s.render.project(&state.projects[crate::api::idx(pid)]);
    ok(StatusCode::OK, body)
}

/// The source a members route names, and (for a project) its group.
fn source<const GROUP: bool>(state: &State, key: &str) -> Result<(Source, u64), ApiError> {
    if GROUP {
        state.access.group(key).map(|g| (Source::Group(g.id), g.id)).ok_or_else(|| not_found("Group"))
    } else {
        state.project(key).map(|p| (Source::Project(p.id), p.group_id)).ok_or_else(|| not_found("Project"))
    }
}

fn member_json(state: &State, base: &str, uid: u64, m: &Membership) -> Value {
    let Some(u) = state.access.user(uid) else { return Value::Null };
    let mut v = user_basic(base, u);
    let map = v.as_object_mut().expect("an object");
    map.insert("access_level".into(), json!(m.access_level));
    map.insert("created_at".into(), json!(iso_text(m.created_at)));
    if let Some(by) = m.created_by.and_then(|id| state.access.user(id)) {
        map.insert("created_by".into(), user_basic(base, by));
    }
    map.insert("expires_at".into(), json!(m.expires_at));
    map.insert("membership_state".into(), json!("active"));
    v
}

fn not_a_member() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}))
}

/// `GET .../members` (direct members) and `GET .../members/all` (with inherited ones), with
/// `query` (name or username) and `user_ids` filters.
async fn list<const G: bool, const ALL: bool>(
    Ax(s): Sh,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    params: Params,
) -> ApiResult {
    let state = s.lock();
    let (src, group) = source::<G>(&state, &id)?;
    let members = if ALL { state.access.members_all(src, group) } else { state.access.members_direct(src) };
    let query = params.string("query").map(|q| q.to_lowercase());
    let ids: Option<Vec<u64>> = match params.0.get("user_ids") {
        None => None,
        Some(Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect()),
        Some(Value::String(list)) => Some(list.split(',').filter_map(|x| x.trim().parse().ok()).collect()),
        Some(_) => return Err(invalid("user_ids")),
    };
    let items = members
        .iter()
        .filter(|(uid, _)| ids.as_ref().is_none_or(|ids| ids.contains(*uid)))
        .filter(|(uid, _)| {
            query.as_ref().is_none_or(|q| {
                state.access.user(**uid).is_some_and(|u| {
                    u.username.to_lowercase().contains(q.as_str()) || u.name.to_lowercase().contains(q.as_str())
                })
            })
        })
        .map(|(uid, m)| member_json(&state, &s.render.base, *uid, m))
        .collect();
    drop(state);
    Ok(paginate(&uri, &params, &s.render.base, items))
}

async fn show<const G: bool, const ALL: bool>(Ax(s): Sh, Path((id, uid)): Path<(String, String)>) -> ApiResult {
    let uid = user_id(&uid)?;
    let state = s.lock();
    let (src, group) = source::<G>(&state, &id)?;
    let members = if ALL { state.access.members_all(src, group) } else { state.access.members_direct(src) };
    let m = members.get(&uid).ok_or_else(not_a_member)?;
    ok(StatusCode::OK, member_json(&state, &s.render.base, uid, m))
}

/// The `access_level` parameter as Grape checks it: present and a number.
fn level_param(params: &Params) -> Result<u8, ApiError> {
    let raw = params.string("access_level").ok_or_else(|| missing("access_level"))?;
    raw.parse::<u8>().map_err(|_| ApiError(StatusCode::BAD_REQUEST, json!({"error": "access_level is invalid"})))
}

/// The model's validation of a level, after the endpoint's own checks. The wording of the 400 is
/// Rails' inclusion message; not confirmed for this endpoint.
fn valid_level(number: u8) -> Result<u8, ApiError> {
    if level::ALL.contains(&number) {
        Ok(number)
    } else {
        Err(ApiError(StatusCode::BAD_REQUEST, json!({"message": {"access_level": ["is not included in the list"]}})))
    }
}

/// Only an Owner (or an administrator) grants, changes or removes the Owner role
/// (permissions.md, note 20: "Maintainers cannot create, demote, or remove Owners"). GitLab's
/// exact answer is not confirmed; 403 here.
fn owner_rule(state: &State, caller: Caller, src: Source, group: u64, touches_owner: bool) -> Result<(), ApiError> {
    let level = state.access.level(src, group, caller.user_id).unwrap_or(0);
    if touches_owner && !caller.admin && level < level::OWNER {
        return Err(ApiError(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"})));
    }
    Ok(())
}

async fn add<const G: bool>(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let uid = params.string("user_id").ok_or_else(|| missing("user_id"))?;
    let uid = user_id(&uid)?;
    let wanted = level_param(&params)?;
    let mut state = s.lock();
    let (src, group) = source::<G>(&state, &id)?;
    // lib/api/members.rb's order: an existing member, then an unknown user, then validation.
    if state.access.members.contains_key(&(src, uid)) {
        return Err(ApiError(StatusCode::CONFLICT, json!({"message": "Member already exists"})));
    }
    if state.access.user(uid).is_none() {
        return Err(not_found("User"));
    }
    let wanted = valid_level(wanted)?;
    owner_rule(&state, caller, src, group, wanted == level::OWNER)?;
    let m = Membership {
        access_level: wanted,
        created_at: Utc::now(),
        created_by: Some(caller.user_id),
        expires_at: params.string("expires_at"),
    };
    let body = member_json(&state, &s.render.base, uid, &m);
    state.access.members.insert((src, uid), m);
    ok(StatusCode::CREATED, body)
}

async fn edit<const G: bool>(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path((id, uid)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let uid = user_id(&uid)?;
    let wanted = level_param(&params)?;
    let mut state = s.lock();
    let (src, group) = source::<G>(&state, &id)?;
    let current = state.access.members.get(&(src, uid)).map(|m| m.access_level).ok_or_else(not_a_member)?;
    let wanted = valid_level(wanted)?;
    owner_rule(&state, caller, src, group, wanted == level::OWNER || current == level::OWNER)?;
    let m = state.access.members.get_mut(&(src, uid)).expect("checked");
    m.access_level = wanted;
    if let Some(e) = params.string("expires_at") {
        m.expires_at = Some(e).filter(|e| !e.is_empty());
    }
    let m = state.access.members[&(src, uid)].clone();
    ok(StatusCode::OK, member_json(&state, &s.render.base, uid, &m))
}

async fn remove<const G: bool>(
    Ax(s): Sh,
    Extension(caller): Extension<Caller>,
    Path((id, uid)): Path<(String, String)>,
) -> ApiResult {
    let uid = user_id(&uid)?;
    let mut state = s.lock();
    let (src, group) = source::<G>(&state, &id)?;
    let current = state.access.members.get(&(src, uid)).map(|m| m.access_level).ok_or_else(not_a_member)?;
    owner_rule(&state, caller, src, group, current == level::OWNER)?;
    state.access.members.remove(&(src, uid));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The caller's own levels as `GET /projects/:id` shows them (`permissions`): the direct project
/// membership and the group's.
pub(crate) fn permissions(state: &State, caller: Caller, project_id: u64, group_id: u64) -> Value {
    let direct = state.access.members.get(&(Source::Project(project_id), caller.user_id)).map(|m| m.access_level);
    let group = state.access.level(Source::Group(group_id), 0, caller.user_id);
    let entry = |l: Option<u8>| l.map(|l| json!({"access_level": l, "notification_level": 3})).unwrap_or(Value::Null);
    json!({"project_access": entry(direct), "group_access": entry(group)})
}

/// A pipeline for a protected branch needs the right to push or merge there
/// (`Gitlab::Ci::Pipeline::Chain::Validate::Abilities#allowed_to_write_ref?`); without it GitLab
/// refuses the pipeline with a 400 and this message.
pub(crate) fn may_run_on(s: &Shared, caller: Caller, pid: u64, git_ref: &str, tag: bool) -> Result<(), ApiError> {
    let state = s.lock();
    let p = &state.projects[crate::api::idx(pid)];
    let level = state.access.level(Source::Project(pid), p.group_id, caller.user_id);
    if !p.is_protected(git_ref, tag) || caller.admin || level.unwrap_or(0) >= level::MAINTAINER {
        return Ok(());
    }
    let message = format!(
        "You do not have sufficient permission to run a pipeline on '{git_ref}'. Please select a different branch or contact your administrator for assistance."
    );
    Err(ApiError(StatusCode::BAD_REQUEST, json!({"message": {"base": [message]}})))
}
