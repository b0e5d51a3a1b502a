//! The JSON GitLab would send: API objects and webhook bodies, with every key the reference samples
//! carry (shared/gitlab-reference/samples), GitLab's types and its nulls. Values the sim has no
//! notion of (stars, licences, runners) get GitLab's neutral defaults.

use chrono::{DateTime, Utc};
use cloudci_gitlab::types::{Status, Timestamp};
use serde_json::{Value, json};

use crate::access::Source;
use crate::git::CommitInfo;
use crate::state::{Hook, Job, MergeRequest, Payloads, Pipeline, Project, State};

/// The sim's identity in payloads: GitLab 19 with the root user acting.
pub const VERSION: &str = "19.0.0-sim";

/// Renders objects for a sim reachable at `base` (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub(crate) struct Render {
    /// The sim's URL, without a trailing slash.
    pub(crate) base: String,
}

/// ISO 8601 with milliseconds and `Z`, as a string (for predefined variables).
pub(crate) fn iso_text(t: DateTime<Utc>) -> String {
    Timestamp::iso(t).as_str().to_owned()
}

fn iso(t: DateTime<Utc>) -> Value {
    Value::String(Timestamp::iso(t).as_str().to_owned())
}

fn iso_opt(t: Option<DateTime<Utc>>) -> Value {
    t.map(iso).unwrap_or(Value::Null)
}

fn hook_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(Timestamp::hook(t).as_str().to_owned())).unwrap_or(Value::Null)
}

/// Pipeline durations are whole seconds in GitLab.
fn secs(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!((b - a).num_seconds().max(0)),
        _ => Value::Null,
    }
}

/// GitLab's display text for a status (`detailed_status`).
pub(crate) fn status_text(status: &Status) -> &str {
    match status {
        Status::Success => "passed",
        Status::Manual => "manual action",
        Status::Scheduled => "delayed",
        Status::WaitingForResource => "waiting",
        other => other.as_str(),
    }
}

impl Render {
    /// A user as API objects embed them (`UserBasic`): the directory's user, or root when the id
    /// is unknown.
    fn user(&self, state: &State, id: u64) -> Value {
        let (id, username, name) = match state.access.user(id) {
            Some(u) => (u.id, u.username.as_str(), u.name.as_str()),
            None => (1, "root", "Administrator"),
        };
        json!({
            "id": id, "username": username, "name": name, "state": "active",
            "avatar_url": null, "web_url": format!("{}/{username}", self.base)
        })
    }

    /// The user as job objects embed it: the basic fields plus the profile ones.
    fn job_user(&self, state: &State, id: u64) -> Value {
        let mut u = self.user(state, id);
        if let Value::Object(m) = &mut u {
            m.extend(
                json!({"created_at": "2026-01-01T00:00:00.000Z", "bio": null, "location": null, "public_email": "",
                    "skype": "", "linkedin": "", "twitter": "", "website_url": "", "organization": ""})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            );
        }
        u
    }

    /// The user as webhook payloads carry it.
    fn hook_user(&self, state: &State, id: u64) -> Value {
        let u = self.user(state, id);
        let email = if u["id"] == 1 {
            "admin@example.com".to_owned()
        } else {
            format!("{}@example.com", u["username"].as_str().unwrap_or(""))
        };
        json!({"id": u["id"], "name": u["name"], "username": u["username"], "avatar_url": null, "email": email})
    }

    /// `GET /version`
    pub(crate) fn version(&self) -> Value {
        json!({"version": VERSION, "revision": "0000000", "kas": {"enabled": false, "externalUrl": null, "externalK8sProxyUrl": null, "version": null}, "enterprise": false})
    }

    fn project_web(&self, p: &Project) -> String {
        format!("{}/{}", self.base, p.path)
    }

    /// `GET /projects/:id`
    pub(crate) fn project(&self, p: &Project) -> Value {
        let web = self.project_web(p);
        let api = format!("{}/api/v4/projects/{}", self.base, p.id);
        let ns = p.namespace();
        let ns_name = ns.rsplit('/').next().unwrap_or(ns);
        json!({
            "id": p.id, "description": "", "description_html": "", "default_branch": p.default_branch,
            "visibility": p.visibility.as_str(), "ssh_url_to_repo": format!("git@127.0.0.1:{}.git", p.path),
            "http_url_to_repo": format!("{web}.git"), "web_url": web,
            "readme_url": null, "tag_list": [], "topics": [],
            "owner": {"id": 1, "name": "Administrator", "created_at": "2026-01-01T00:00:00.000Z"},
            "name": p.name(), "name_with_namespace": p.path.replace('/', " / "), "path": p.name(),
            "path_with_namespace": p.path, "issues_enabled": true, "open_issues_count": 0,
            "merge_requests_enabled": true, "jobs_enabled": true, "wiki_enabled": false, "snippets_enabled": false,
            "can_create_merge_request_in": true, "resolve_outdated_diff_discussions": false,
            "container_registry_enabled": false, "container_registry_access_level": "disabled",
            "security_and_compliance_access_level": "private",
            "container_expiration_policy": {"cadence": "1d", "enabled": false, "keep_n": 10, "older_than": "90d",
                "name_regex": null, "name_regex_delete": null, "name_regex_keep": null, "next_run_at": null},
            "created_at": iso(p.created_at), "updated_at": iso(p.created_at), "last_activity_at": iso(p.created_at),
            "creator_id": 1,
            "namespace": {"id": p.group_id, "name": ns_name, "path": ns_name, "kind": "group", "full_path": ns,
                "parent_id": null, "avatar_url": null, "web_url": format!("{}/groups/{ns}", self.base)},
            "import_url": null, "import_type": null, "import_status": "none", "import_error": null,
            "permissions": {"project_access": {"access_level": 50, "notification_level": 3}, "group_access": null},
            "archived": false, "avatar_url": null, "license_url": null, "license": null,
            "shared_runners_enabled": true, "group_runners_enabled": true, "forks_count": 0, "star_count": 0,
            "runners_token": null, "ci_default_git_depth": 20, "ci_forward_deployment_enabled": true,
            "ci_forward_deployment_rollback_allowed": true, "ci_allow_fork_pipelines_to_run_in_parent_project": true,
            "ci_separated_caches": true, "ci_restrict_pipeline_cancellation_role": "developer",
            "ci_pipeline_variables_minimum_override_role": "developer", "ci_push_repository_for_job_token_allowed": false,
            "public_jobs": p.public_jobs, "shared_with_groups": [], "repository_storage": "default",
            "only_allow_merge_if_pipeline_succeeds": false, "allow_merge_on_skipped_pipeline": false,
            "allow_pipeline_trigger_approve_deployment": false, "restrict_user_defined_variables": false,
            "only_allow_merge_if_all_discussions_are_resolved": false, "remove_source_branch_after_merge": true,
            "printing_merge_requests_link_enabled": true, "request_access_enabled": true, "merge_method": "merge",
            "squash_option": "default_off", "auto_devops_enabled": false, "auto_devops_deploy_strategy": "continuous",
            "approvals_before_merge": 0, "mirror": false, "mirror_user_id": null, "mirror_trigger_builds": false,
            "only_mirror_protected_branches": false, "mirror_overwrites_diverged_branches": false,
            "external_authorization_classification_label": null, "packages_enabled": false,
            "service_desk_enabled": false, "service_desk_address": null, "autoclose_referenced_issues": true,
            "suggestion_commit_message": null, "enforce_auth_checks_on_uploads": true, "merge_commit_template": null,
            "squash_commit_template": null, "issue_branch_template": null, "marked_for_deletion_at": null,
            "marked_for_deletion_on": null, "compliance_frameworks": [], "warn_about_potentially_unwanted_characters": true,
            "pre_receive_secret_detection_enabled": false,
            "statistics": {"commit_count": 0, "storage_size": 0, "repository_size": 0, "wiki_size": 0,
                "lfs_objects_size": 0, "job_artifacts_size": 0, "pipeline_artifacts_size": 0, "packages_size": 0,
                "snippets_size": 0, "uploads_size": 0, "container_registry_size": 0},
            "container_registry_image_prefix": null,
            "_links": {"self": api, "issues": format!("{api}/issues"), "merge_requests": format!("{api}/merge_requests"),
                "repo_branches": format!("{api}/repository/branches"), "labels": format!("{api}/labels"),
                "events": format!("{api}/events"), "members": format!("{api}/members"),
                "cluster_agents": format!("{api}/cluster_agents")}
        })
    }

    /// A branch (`GET /projects/:id/repository/branches/:branch`).
    pub(crate) fn branch(&self, p: &Project, name: &str, commit: &CommitInfo) -> Value {
        json!({
            "name": name, "merged": false, "protected": name == p.default_branch, "default": name == p.default_branch,
            "developers_can_push": false, "developers_can_merge": false, "can_push": true,
            "web_url": format!("{}/-/tree/{name}", self.project_web(p)),
            "commit": {
                "id": commit.sha, "short_id": &commit.sha[..8.min(commit.sha.len())], "created_at": commit.committed_at,
                "parent_ids": commit.parents, "title": commit.title, "message": commit.message,
                "author_name": commit.author_name, "author_email": commit.author_email,
                "authored_date": commit.authored_at, "committer_name": commit.author_name,
                "committer_email": commit.author_email, "committed_date": commit.committed_at, "trailers": {},
                "web_url": format!("{}/-/commit/{}", self.project_web(p), commit.sha)
            }
        })
    }

    fn pipeline_url(&self, state: &State, p: &Pipeline) -> String {
        let path = state.projects.iter().find(|x| x.id == p.project_id).map(|x| x.path.as_str()).unwrap_or("");
        format!("{}/{path}/-/pipelines/{}", self.base, p.id)
    }

    /// A pipeline in list form.
    pub(crate) fn pipeline_basic(&self, state: &State, p: &Pipeline) -> Value {
        json!({
            "id": p.id, "iid": p.iid, "project_id": p.project_id, "status": p.status, "source": p.source,
            "ref": p.git_ref, "sha": p.sha, "name": p.name, "web_url": self.pipeline_url(state, p),
            "created_at": iso(p.created_at), "updated_at": iso(p.updated_at)
        })
    }

    /// A pipeline in full.
    pub(crate) fn pipeline(&self, state: &State, p: &Pipeline) -> Value {
        let mut v = self.pipeline_basic(state, p);
        let url = self.pipeline_url(state, p);
        let details_path = url.trim_start_matches(&self.base).to_owned();
        let group = p.status.as_str();
        let extra = json!({
            "before_sha": "0000000000000000000000000000000000000000", "tag": p.tag, "yaml_errors": null,
            "user": self.user(state, p.user_id), "started_at": iso_opt(p.started_at), "finished_at": iso_opt(p.finished_at),
            "committed_at": null, "duration": secs(p.started_at, p.finished_at),
            "queued_duration": secs(Some(p.created_at), p.started_at), "coverage": null,
            "detailed_status": {
                "icon": format!("status_{group}"), "text": status_text(&p.status), "label": status_text(&p.status),
                "group": group, "tooltip": status_text(&p.status), "has_details": true,
                "details_path": details_path, "illustration": null,
                "favicon": format!("/assets/ci_favicons/favicon_status_{group}.png")
            },
            "archived": false
        });
        if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
            a.extend(b);
        }
        v
    }

    /// A job.
    pub(crate) fn job(&self, state: &State, j: &Job) -> Value {
        let p = &state.pipelines[&j.pipeline_id];
        let path = state.projects.iter().find(|x| x.id == j.project_id).map(|x| x.path.as_str()).unwrap_or("");
        let mut v = json!({
            "commit": {
                "author_email": p.commit.author_email, "author_name": p.commit.author_name,
                "created_at": p.commit.committed_at, "id": p.sha, "message": p.commit.message,
                "short_id": &p.sha[..8.min(p.sha.len())], "title": p.commit.title
            },
            "coverage": j.coverage, "archived": false, "allow_failure": j.failure_allowed(),
            "created_at": iso(j.created_at), "started_at": iso_opt(j.started_at), "finished_at": iso_opt(j.finished_at),
            "erased_at": null, "duration": j.duration(), "queued_duration": j.queued_duration(),
            "artifacts_expire_at": null, "tag_list": j.spec.tags, "id": j.id, "name": j.spec.name,
            "pipeline": {"id": p.id, "project_id": p.project_id, "ref": p.git_ref, "sha": p.sha, "status": p.status},
            "ref": p.git_ref, "artifacts": [], "runner": null, "runner_manager": null, "stage": j.spec.stage,
            "status": j.status, "tag": p.tag, "web_url": format!("{}/{path}/-/jobs/{}", self.base, j.id),
            "project": {"ci_job_token_scope_enabled": false}, "user": self.job_user(state, p.user_id)
        });
        let map = v.as_object_mut().expect("an object");
        if j.status == Status::Failed {
            map.insert("failure_reason".into(), json!(j.failure_reason.as_deref().unwrap_or("script_failure")));
        }
        let mut artifacts =
            vec![json!({"file_type": "trace", "size": j.trace.len(), "filename": "job.log", "file_format": null})];
        if let Some((_, size)) = &j.artifact {
            map.insert("artifacts_file".into(), json!({"filename": "artifacts.zip", "size": size}));
            artifacts.insert(
                0,
                json!({"file_type": "archive", "size": size, "filename": "artifacts.zip", "file_format": "zip"}),
            );
        }
        for (kind, path, size) in &j.reports {
            let filename = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            // GitLab stores reports gzipped, whatever their type.
            artifacts.push(json!({"file_type": kind, "size": size, "filename": filename, "file_format": "gzip"}));
        }
        if let Some(env) = &j.spec.environment {
            map.insert("environment".into(), json!({"name": env}));
        }
        if !j.trace.is_empty() || j.artifact.is_some() {
            map.insert("artifacts".into(), Value::Array(artifacts));
        }
        v
    }

    /// A bridge (`GET /projects/:id/pipelines/:id/bridges`): a job's keys plus
    /// `downstream_pipeline`.
    pub(crate) fn bridge(&self, state: &State, j: &Job) -> Value {
        let mut v = self.job(state, j);
        let downstream = j.downstream.and_then(|id| state.pipelines.get(&id)).map(|d| {
            json!({"id": d.id, "iid": d.iid, "project_id": d.project_id, "sha": d.sha, "ref": d.git_ref,
                "status": d.status, "source": d.source, "created_at": iso(d.created_at), "updated_at": iso(d.updated_at),
                "web_url": self.pipeline_url(state, d)})
        });
        if let Value::Object(m) = &mut v {
            m.remove("artifacts");
            m.remove("artifacts_file");
            m.remove("artifacts_expire_at");
            m.remove("tag_list");
            m.remove("runner");
            m.remove("runner_manager");
            m.insert("downstream_pipeline".into(), downstream.unwrap_or(Value::Null));
        }
        v
    }

    /// A merge request.
    pub(crate) fn merge_request(&self, state: &State, mr: &MergeRequest) -> Value {
        let project = state.projects.iter().find(|p| p.id == mr.project_id);
        let path = project.map(|p| p.path.as_str()).unwrap_or("");
        let head = state
            .pipelines
            .values()
            .rev()
            .find(|p| p.project_id == mr.project_id && p.git_ref == mr.source_branch && p.sha == mr.sha);
        let merged_by = (mr.state == "merged").then(|| self.user(state, mr.merge_user_id.unwrap_or(mr.author_id)));
        let mut author = self.user(state, mr.author_id);
        author["locked"] = json!(false);
        let detailed = match (mr.state.as_str(), head.map(|h| &h.status)) {
            ("opened", Some(s)) if !s.is_completed() => "ci_still_running",
            ("opened", Some(Status::Failed)) => "ci_must_pass",
            ("opened", _) => "mergeable",
            _ => "not_open",
        };
        json!({
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title,
            "description": mr.description, "state": mr.state, "imported": false, "imported_from": "none",
            "created_at": iso(mr.created_at), "updated_at": iso(mr.updated_at),
            "target_branch": mr.target_branch, "source_branch": mr.source_branch, "upvotes": 0, "downvotes": 0,
            "author": author, "assignee": null, "assignees": [], "reviewers": [],
            "source_project_id": mr.project_id, "target_project_id": mr.project_id, "labels": [], "draft": false,
            "work_in_progress": false, "milestone": null, "merge_when_pipeline_succeeds": mr.auto_merge,
            "merge_status": if mr.state == "opened" { "can_be_merged" } else { "unchecked" },
            "detailed_merge_status": detailed, "merge_error": null, "sha": mr.sha,
            "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": null, "user_notes_count": 0,
            "discussion_locked": null, "should_remove_source_branch": mr.remove_source_branch,
            "force_remove_source_branch": mr.remove_source_branch, "allow_collaboration": false,
            "allow_maintainer_to_push": false,
            "web_url": format!("{}/{path}/-/merge_requests/{}", self.base, mr.iid),
            "references": {"short": format!("!{}", mr.iid), "relative": format!("!{}", mr.iid), "full": format!("{path}!{}", mr.iid)},
            "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": null, "human_total_time_spent": null},
            "squash": false, "subscribed": true, "changes_count": "1", "merged_by": merged_by.clone(),
            "merge_user": merged_by, "merged_at": iso_opt(mr.merged_at), "merge_after": null,
            "prepared_at": iso(mr.created_at), "closed_by": null, "closed_at": null,
            "latest_build_started_at": iso_opt(head.and_then(|h| h.started_at)),
            "latest_build_finished_at": iso_opt(head.and_then(|h| h.finished_at)),
            "first_deployed_to_production_at": null,
            "pipeline": head.map(|h| json!({"id": h.id, "sha": h.sha, "ref": h.git_ref, "status": h.status, "web_url": self.pipeline_url(state, h)})),
            "diff_refs": {"base_sha": null, "head_sha": mr.sha, "start_sha": null},
            "diverged_commits_count": 0, "task_completion_status": {"count": 0, "completed_count": 0},
            // Keys the list form carries.
            "approvals_before_merge": null, "blocking_discussions_resolved": true, "has_conflicts": false,
            "reference": format!("!{}", mr.iid), "squash_on_merge": false
        })
    }

    /// A project hook (`samples/api-project-hook.json`) or a group hook (`group_id` instead of
    /// `project_id`, plus the group-only toggles, as doc/api/group_webhooks.md shows it). Tokens are
    /// never shown.
    pub(crate) fn hook(&self, h: &Hook) -> Value {
        let mut v = json!({
            "id": h.id, "url": h.url, "name": h.name, "description": h.description,
            "push_events": h.push_events, "push_events_branch_filter": "", "issues_events": false,
            "confidential_issues_events": false, "merge_requests_events": h.merge_requests_events,
            "tag_push_events": h.tag_push_events, "note_events": false, "confidential_note_events": false,
            "job_events": h.job_events, "pipeline_events": h.pipeline_events, "wiki_page_events": false,
            "deployment_events": false, "releases_events": false, "milestone_events": false,
            "feature_flag_events": false, "enable_ssl_verification": h.enable_ssl_verification,
            "repository_update_events": false, "alert_status": h.alert_status(Utc::now()),
            "disabled_until": iso_opt(h.disabled_until.filter(|t| *t > Utc::now())), "url_variables": [],
            "created_at": iso(h.created_at), "resource_access_token_events": false,
            "custom_webhook_template": null, "custom_headers": [],
            "token_present": h.token.is_some(), "signing_token_present": h.signing_token.is_some()
        });
        let map = v.as_object_mut().expect("an object");
        match h.owner {
            Source::Project(id) => {
                map.insert("project_id".into(), json!(id));
            }
            Source::Group(id) => {
                map.insert("group_id".into(), json!(id));
                for key in ["subgroup_events", "member_events", "emoji_events"] {
                    map.insert(key.into(), json!(false));
                }
                map.insert("branch_filter_strategy".into(), json!("wildcard"));
            }
        }
        v
    }

    /// The `project` object webhooks carry.
    pub(crate) fn hook_project(&self, p: &Project) -> Value {
        let web = self.project_web(p);
        json!({
            "id": p.id, "name": p.name(), "description": "", "web_url": web, "avatar_url": null,
            "git_ssh_url": format!("git@127.0.0.1:{}.git", p.path), "git_http_url": format!("{web}.git"),
            "namespace": p.namespace(), "visibility_level": p.visibility.level(), "path_with_namespace": p.path,
            "default_branch": p.default_branch, "ci_config_path": null,
            "homepage": web, "url": format!("git@127.0.0.1:{}.git", p.path),
            "ssh_url": format!("git@127.0.0.1:{}.git", p.path), "http_url": format!("{web}.git")
        })
    }

    fn hook_commit(&self, p: &Project, c: &CommitInfo) -> Value {
        json!({
            "id": c.sha, "message": c.message, "title": c.title, "timestamp": c.committed_at,
            "url": format!("{}/-/commit/{}", self.project_web(p), c.sha),
            "author": {"name": c.author_name, "email": c.author_email}
        })
    }

    /// The `repository` object job and push webhooks carry.
    pub(crate) fn hook_repository(&self, p: &Project) -> Value {
        let web = self.project_web(p);
        json!({"name": p.name(), "url": format!("git@127.0.0.1:{}.git", p.path), "description": "",
            "homepage": web, "git_ssh_url": format!("git@127.0.0.1:{}.git", p.path),
            "git_http_url": format!("{web}.git"), "visibility_level": p.visibility.level()})
    }

    /// A Merge Request Hook body, with every key of GitLab's sample
    /// (`webhook-merge-request-event.json`). The sim has no milestones, time tracking, approval
    /// rules or edits by other users: those keys carry GitLab's values for "none" (`null`, `0`,
    /// `[]`). `changes` stays empty (GitLab may send it empty too, FACTS §2.3).
    pub(crate) fn merge_request_hook(&self, state: &State, mr: &MergeRequest, action: &str) -> Value {
        let project = &state.projects[usize::try_from(mr.project_id - 1).unwrap_or(0)];
        let proj = self.hook_project(project);
        let head =
            state.pipelines.values().rev().find(|p| p.project_id == mr.project_id && p.git_ref == mr.source_branch);
        let last_commit = match &mr.last_commit {
            Some(c) => self.hook_commit(project, c),
            None => json!({"id": mr.sha}),
        };
        // The user who merged, or who set auto-merge (GitLab records the one who "set to merge").
        let merge_user_id = if mr.state == "merged" || mr.auto_merge { mr.merge_user_id } else { None };
        // Who acted: the author opens; the one who merged or set auto-merge otherwise.
        let actor = if action == "open" { mr.author_id } else { mr.merge_user_id.unwrap_or(mr.author_id) };
        // GitLab keeps the API's `remove_source_branch` as `merge_params.force_remove_source_branch`.
        let merge_params = if mr.remove_source_branch {
            json!({"force_remove_source_branch": "1"})
        } else {
            json!({"force_remove_source_branch": "0"})
        };
        let now = Some(Utc::now());
        json!({
            "object_kind": "merge_request", "event_type": "merge_request", "user": self.hook_user(state, actor),
            "project": proj.clone(),
            "object_attributes": {
                "id": mr.id, "iid": mr.iid, "title": mr.title, "description": mr.description,
                "source_branch": mr.source_branch, "target_branch": mr.target_branch,
                "source_project_id": mr.project_id, "target_project_id": mr.project_id,
                "author_id": mr.author_id, "assignee_ids": [], "reviewer_ids": [], "state": mr.state,
                "state_id": match mr.state.as_str() { "opened" => 1, "closed" => 2, "merged" => 3, _ => 4 },
                "draft": false, "merge_status": "can_be_merged", "detailed_merge_status": "mergeable",
                "merge_when_pipeline_succeeds": mr.auto_merge, "head_pipeline_id": head.map(|h| h.id),
                "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": null, "merge_error": null,
                "merge_params": merge_params, "merge_user_id": merge_user_id,
                "created_at": hook_time(Some(mr.created_at)), "updated_at": hook_time(Some(mr.updated_at)),
                "prepared_at": hook_time(Some(mr.created_at)),
                "last_edited_at": null, "last_edited_by_id": null,
                "updated_by_id": if action == "open" { Value::Null } else { json!(actor) },
                "milestone_id": null, "time_estimate": 0, "total_time_spent": 0, "time_change": 0,
                "human_time_estimate": null, "human_total_time_spent": null, "human_time_change": null,
                "blocking_discussions_resolved": true,
                // The sim's only user owns every project: never a first-time contributor.
                "first_contribution": false,
                "url": format!("{}/-/merge_requests/{}", self.project_web(project), mr.iid),
                "source": proj.clone(), "target": proj, "labels": [], "system": false, "action": action,
                "actioned_at": hook_time(now), "approval_rules": [],
                "last_commit": last_commit
            },
            "labels": [], "changes": {}, "assignees": [], "reviewers": [],
            "repository": self.hook_repository(project)
        })
    }

    /// A Push Hook body.
    pub(crate) fn push_hook(
        &self,
        p: &Project,
        branch: &str,
        before: &str,
        after: &str,
        commits: &[CommitInfo],
        total: usize,
    ) -> Value {
        json!({
            "object_kind": "push", "event_name": "push", "before": before, "after": after,
            "ref": format!("refs/heads/{branch}"), "ref_protected": branch == p.default_branch,
            "checkout_sha": if after.bytes().all(|b| b == b'0') { Value::Null } else { json!(after) },
            "message": null, "user_id": 1, "user_name": "Administrator", "user_username": "root",
            "user_email": "admin@example.com", "user_avatar": null, "project_id": p.id,
            "project": self.hook_project(p),
            "commits": commits.iter().map(|c| {
                let mut v = self.hook_commit(p, c);
                if let Some(m) = v.as_object_mut() {
                    m.insert("added".into(), json!([]));
                    m.insert("modified".into(), json!([]));
                    m.insert("removed".into(), json!([]));
                }
                v
            }).collect::<Vec<_>>(),
            "total_commits_count": total, "push_options": {}, "repository": self.hook_repository(p)
        })
    }
}

impl Payloads for Render {
    fn pipeline_hook(&self, state: &State, p: &Pipeline) -> Value {
        let project = &state.projects[usize::try_from(p.project_id - 1).unwrap_or(0)];
        let builds: Vec<Value> = state
            .latest_jobs(p.id)
            .iter()
            .filter(|j| !j.spec.is_bridge())
            .rev()
            .map(|j| {
                json!({
                    "id": j.id, "stage": j.spec.stage, "name": j.spec.name, "status": j.status,
                    "created_at": hook_time(Some(j.created_at)), "started_at": hook_time(j.started_at),
                    "finished_at": hook_time(j.finished_at), "duration": j.duration(),
                    "queued_duration": j.queued_duration(),
                    "failure_reason": if j.status == Status::Failed { json!(j.failure_reason.as_deref().unwrap_or("script_failure")) } else { Value::Null },
                    "when": j.spec.when.as_str(), "manual": j.spec.when == crate::ci::When::Manual,
                    "allow_failure": j.failure_allowed(), "user": self.hook_user(state, p.user_id), "runner": null,
                    "artifacts_file": {"filename": j.artifact.as_ref().map(|_| "artifacts.zip"), "size": j.artifact.as_ref().map(|a| a.1)},
                    "environment": j.spec.environment.as_ref().map(|e| json!({"name": e, "action": "start", "deployment_tier": null}))
                })
            })
            .collect();
        let mr = state
            .merge_requests
            .values()
            .find(|m| m.project_id == p.project_id && m.source_branch == p.git_ref && m.state == "opened");
        json!({
            "object_kind": "pipeline",
            "object_attributes": {
                "id": p.id, "iid": p.iid, "name": p.name, "ref": p.git_ref, "tag": p.tag, "sha": p.sha,
                "before_sha": "0000000000000000000000000000000000000000", "source": p.source, "status": p.status,
                "detailed_status": status_text(&p.status), "stages": p.config.stages,
                "created_at": hook_time(Some(p.created_at)), "finished_at": hook_time(p.finished_at),
                "duration": secs(p.started_at, p.finished_at), "queued_duration": secs(Some(p.created_at), p.started_at),
                "variables": p.variables.iter().map(|v| json!({"key": v.key, "value": v.value})).collect::<Vec<_>>(),
                "url": self.pipeline_url(state, p), "protected_ref": p.git_ref == project.default_branch
            },
            "merge_request": mr.map(|m| json!({
                "id": m.id, "iid": m.iid, "title": m.title, "source_branch": m.source_branch,
                "source_project_id": m.project_id, "target_branch": m.target_branch,
                "target_project_id": m.project_id, "state": m.state, "merge_status": "can_be_merged",
                "detailed_merge_status": "mergeable",
                "url": format!("{}/-/merge_requests/{}", self.project_web(project), m.iid)
            })),
            "user": self.hook_user(state, p.user_id), "project": self.hook_project(project),
            "commit": self.hook_commit(project, &p.commit), "builds": builds,
            "source_pipeline": p.parent.map(|(parent, bridge)| json!({
                "project": {"id": project.id, "web_url": self.project_web(project), "path_with_namespace": project.path},
                "job_id": bridge, "pipeline_id": parent, "project_id": project.id
            }))
        })
    }

    fn job_hook(&self, state: &State, j: &Job) -> Value {
        let p = &state.pipelines[&j.pipeline_id];
        let project = &state.projects[usize::try_from(j.project_id - 1).unwrap_or(0)];
        let iso_s =
            |t: Option<DateTime<Utc>>| t.map(|t| json!(Timestamp::iso_seconds(t).as_str())).unwrap_or(Value::Null);
        let started = p.started_at;
        json!({
            "object_kind": "build", "ref": p.git_ref, "tag": p.tag,
            "before_sha": "0000000000000000000000000000000000000000", "sha": p.sha,
            "retries_count": j.retries_count, "build_id": j.id, "build_name": j.spec.name,
            "build_stage": j.spec.stage, "build_status": j.status,
            "build_created_at": iso(j.created_at), "build_started_at": iso_opt(j.started_at),
            "build_finished_at": iso_opt(j.finished_at), "build_created_at_iso": iso_s(Some(j.created_at)),
            "build_started_at_iso": iso_s(j.started_at), "build_finished_at_iso": iso_s(j.finished_at),
            "build_duration": j.duration(), "build_queued_duration": j.queued_duration(),
            "build_allow_failure": j.failure_allowed(),
            "build_failure_reason": j.failure_reason.as_deref().unwrap_or("unknown_failure"),
            "pipeline_id": p.id, "runner": null, "project_id": project.id, "project_name": project.path,
            "user": self.hook_user(state, p.user_id),
            "commit": {
                "id": p.id, "name": null, "sha": p.sha, "message": p.commit.message,
                "author_name": p.commit.author_name, "author_email": p.commit.author_email,
                "author_url": format!("{}/root", self.base), "status": p.status,
                "duration": secs(p.started_at, p.finished_at), "started_at": hook_time(started),
                "finished_at": hook_time(p.finished_at), "started_at_iso": iso_s(started),
                "finished_at_iso": iso_s(p.finished_at)
            },
            "repository": self.hook_repository(project), "project": self.hook_project(project),
            "environment": null
        })
    }
}
