//! Search, its export, and the regulator export.

use super::*;

/// The search form: free query text plus filters that become query clauses.
#[derive(Deserialize, Default, Clone)]
pub struct SearchForm {
    #[serde(default)]
    pub(crate) q: String,
    #[serde(default)]
    pub(crate) participant: String,
    #[serde(default)]
    pub(crate) direction: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) rule: String,
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) flagged: Option<String>,
    #[serde(default)]
    pub(crate) page: usize,
}

/// A filter value as one query token: whitespace, quotes and parentheses would let a
/// value start a new clause or regroup the query, so they are dropped.
fn token(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '"' | '(' | ')'))
        .collect()
}

impl SearchForm {
    fn is_empty(&self) -> bool {
        [
            &self.q,
            &self.participant,
            &self.direction,
            &self.since,
            &self.until,
            &self.rule,
            &self.action,
        ]
        .iter()
        .all(|s| s.trim().is_empty())
            && self.flagged.is_none()
    }

    /// The archive query the form stands for, its lexicons written out.
    fn query(&self, lexicons: &Lexicons) -> Result<String, AppError> {
        let typed = lexicons
            .expand(self.q.trim())
            .map_err(|e| AppError::BadRequest(format!("bad query: {e}")))?;
        // Checked alone first: a whole query followed by more terms ANDs them with all
        // of it, but a broken one ("a OR") could be completed by a filter into another
        // meaning.
        custos_archive::query::parse(&typed)
            .map_err(|e| AppError::BadRequest(format!("bad query: {e}")))?;
        let mut q = vec![typed];
        let mut add = |field: &str, v: &str| {
            let v = token(v);
            if !v.is_empty() {
                q.push(format!("{field}:{v}"));
            }
        };
        add("with", &self.participant);
        add("direction", &self.direction);
        add("after", &self.since);
        add("rule", &self.rule);
        add("action", &self.action);
        if !self.until.trim().is_empty() {
            // The form's end date is inclusive; `before:` is exclusive.
            let t = Timestamp::parse(self.until.trim()).map_err(|_| {
                AppError::BadRequest(format!("bad end date {:?}: use YYYY-MM-DD", self.until))
            })?;
            q.push(format!(
                "before:{}",
                Timestamp(t.0.saturating_add(86_400_000))
            ));
        }
        if self.flagged.is_some() {
            q.push("-action:allow".into());
        }
        Ok(q.into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "))
    }

    pub(crate) fn pairs(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("q", &self.q),
            ("participant", &self.participant),
            ("direction", &self.direction),
            ("since", &self.since),
            ("until", &self.until),
            ("rule", &self.rule),
            ("action", &self.action),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        if self.flagged.is_some() {
            p.push(("flagged".into(), "1".into()));
        }
        p
    }
}

/// The deepest page a search may ask for: the archive returns the newest N
/// hits, so deep pages cost N record reads.
const MAX_PAGE: usize = 200;

async fn run_search(
    app: &Arc<App>,
    query: String,
    limit: usize,
) -> Result<custos_archive::Searched, AppError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || search_all_nodes(&app, &query, limit))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
}

/// This node's chain and, with several nodes, every other chain in the bucket: the
/// newest `limit` hits of all, in time order, each naming its node.
fn search_all_nodes(
    app: &App,
    query: &str,
    limit: usize,
) -> Result<custos_archive::Searched, AppError> {
    let mut searched = app.archive.search_covered(query, limit)?;
    let peers = crate::app::read(&app.cfg.peers).clone();
    if peers.is_empty() {
        return Ok(searched);
    }
    for h in &mut searched.hits {
        h.node.clone_from(&app.cfg.node);
    }
    let reader = app.archive.reader();
    for p in peers {
        let name = p.node.as_deref().unwrap_or("(unnamed)").to_string();
        let found = reader
            .open_other(&p.dir)
            .map_err(custos_archive::SearchError::from)
            .and_then(|r| r.search_covered(query, limit));
        match found {
            Ok(s) => {
                searched.hits.extend(s.hits.into_iter().map(|mut h| {
                    h.node.clone_from(&p.node);
                    h
                }));
                if searched.uncovered.is_none() {
                    searched.uncovered = s.uncovered.map(|mut u| {
                        u.why = format!("node {name}: {}", u.why);
                        u
                    });
                }
            }
            // A node's chain that cannot be read is said, not hidden.
            Err(e) => {
                searched.uncovered = Some(custos_archive::Uncovered {
                    from: 1,
                    to: 0,
                    why: format!("node {name} could not be searched: {e}"),
                })
            }
        }
    }
    custos_archive::merge_newest(&mut searched.hits, limit);
    Ok(searched)
}

pub async fn search(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Page, AppError> {
    let page = f.page.min(MAX_PAGE);
    let mut results = None;
    let mut error = None;
    let mut uncovered = None;
    if !f.is_empty() {
        match f.query(&app.cfg.lexicons) {
            Ok(query) => {
                app.audit(
                    &a.session.user,
                    audit_action::SEARCH,
                    json!({ "query": query, "page": page }),
                )
                .await?;
                // Copies of one message are separate records: fetch enough of them to
                // fill the page with logical messages.
                let want = ((page + 1) * PAGE + 1) * COPIES_PER_MESSAGE;
                match run_search(&app, query, want).await {
                    Ok(searched) => {
                        uncovered = searched.uncovered;
                        let mut hits = searched.hits;
                        hits.reverse();
                        let messages = custos_archive::group(hits);
                        let has_next = messages.len() > (page + 1) * PAGE;
                        let shown: Vec<MessageHit> =
                            messages.into_iter().skip(page * PAGE).take(PAGE).collect();
                        results = Some((shown, has_next));
                    }
                    Err(AppError::BadRequest(m)) => error = Some(m),
                    Err(e) => return Err(e),
                }
            }
            // A search that could not run is audited too, as typed.
            Err(AppError::BadRequest(m)) => {
                app.audit(
                    &a.session.user,
                    audit_action::SEARCH,
                    json!({ "query": f.q, "page": page, "error": m }),
                )
                .await?;
                error = Some(m);
            }
            Err(e) => return Err(e),
        }
    }
    // Where each hit opens: its conversation, on whichever node's chain it is, once
    // that chain is followed here.
    let links: Vec<Option<String>> = {
        let store = read(&app.store);
        results
            .iter()
            .flat_map(|(hits, _)| hits.iter())
            .map(|mh| {
                store.conversation_link(
                    mh.first.node.as_deref(),
                    mh.first.seq.0,
                    app.cfg.node.as_deref(),
                )
            })
            .collect()
    };
    let terms = highlight::Terms::of(
        &app.cfg
            .lexicons
            .expand(&f.q)
            .unwrap_or_else(|_| f.q.clone()),
    );
    let uncovered = uncovered.map(|u| u.to_string());
    let body = pages::search::search(&pages::search::SearchView {
        form: &f,
        lexicons: &app.cfg.lexicons,
        error: error.as_deref(),
        uncovered: uncovered.as_deref(),
        results: results.as_ref(),
        links: &links,
        terms: &terms,
        own_node: &app.cfg.node,
        page,
    });
    Ok(layout("Search", Some(&a), Nav::Search, body))
}

/// Records fetched per logical message wanted on a search page (a message seen by both
/// parties, their other clients and a replay has a handful of copies).
const COPIES_PER_MESSAGE: usize = 8;

/// Up to this many hits per export download.
const EXPORT_LIMIT: usize = 10_000;

pub async fn export(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Response, AppError> {
    let query = f.query(&app.cfg.lexicons)?;
    let searched = run_search(&app, query.clone(), EXPORT_LIMIT).await?;
    let hits = searched.hits;
    app.audit(
        &a.session.user,
        audit_action::EXPORT,
        json!({ "query": query, "count": hits.len(), "uncovered": searched.uncovered }),
    )
    .await?;
    let mut out = String::new();
    for h in &hits {
        out.push_str(&serde_json::to_string(h).map_err(|e| AppError::Internal(e.to_string()))?);
        out.push('\n');
    }
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"custos-search.jsonl\"",
            ),
        ],
        out,
    )
        .into_response();
    // An export that could not see every record says so where a script looks.
    if let Some(u) = &searched.uncovered {
        if let Ok(v) = header::HeaderValue::from_str(&format!("{}-{}", u.from, u.to)) {
            resp.headers_mut().insert("x-custos-not-searched", v);
        }
    }
    Ok(resp)
}

/// A regulator export of the current search (docs/export-format.md), as one tar file:
/// Parquet rows, HTML transcripts and the signed manifest with every record's proof, so the
/// receiver can check it offline with `custos verify-export` and the public key.
pub async fn regulator_export(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Response, AppError> {
    let Some(keys) = app.cfg.export.clone() else {
        return Err(AppError::NotFound);
    };
    let query = f.query(&app.cfg.lexicons)?;
    let request = custos_archive::ExportRequest {
        query: (!query.trim().is_empty()).then(|| query.clone()),
        since: None,
        until: None,
    };
    // With several nodes: one part per chain and the signed list of parts, as
    // `custos export` writes it.
    let peers = read(&app.cfg.peers).clone();
    let own_node = app.cfg.node.clone();
    let (tar, recorded) = tokio::task::spawn_blocking(move || -> Result<_, AppError> {
        let tmp = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
        let out = tmp.path().join("export");
        let recorded = if peers.is_empty() {
            let summary = custos_archive::export(
                &keys.archive_dir,
                &keys.master_key,
                &keys.signing_key,
                &out,
                &request,
                |_, _| {},
            )
            .map_err(|e| AppError::Internal(format!("export failed: {e}")))?;
            json!({
                "count": summary.records,
                "through_seq": summary.through_seq,
                "selected_by": summary.selected_by.to_string(),
                "manifest_sha256": summary.manifest_sha256,
            })
        } else {
            use custos_archive::export::nodes::{export_chains, ChainSource};
            let mut sources = vec![ChainSource {
                name: own_node.clone().unwrap_or_else(|| store::UNNAMED.into()),
                node: own_node,
                dir: keys.archive_dir.clone(),
            }];
            sources.extend(peers.into_iter().map(|p| {
                ChainSource {
                    name: p
                        .dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| store::UNNAMED.into()),
                    node: p.node,
                    dir: p.dir,
                }
            }));
            let parts = export_chains(
                &sources,
                &keys.master_key,
                &keys.signing_key,
                &out,
                (&request, &custos_archive::ExportOptions::default()),
                |_, _, _| {},
                |_, _| Ok(()),
            )
            .map_err(|e| AppError::Internal(format!("export failed: {e}")))?;
            let count: u64 = parts.iter().map(|(p, _)| p.records).sum();
            let nodes: Vec<serde_json::Value> = parts
                .iter()
                .map(|(p, s)| {
                    json!({
                        "node": p.node,
                        "count": s.records,
                        "through_seq": s.through_seq,
                        "manifest_sha256": s.manifest_sha256,
                    })
                })
                .collect();
            json!({ "count": count, "nodes": nodes })
        };
        // The tar goes to an unnamed temporary file and is streamed from there, so an
        // export of the whole archive costs disk, not memory.
        let file = tempfile::tempfile().map_err(|e| AppError::Internal(e.to_string()))?;
        let mut tar = tar::Builder::new(file);
        tar.append_dir_all("custos-export", &out)
            .map_err(|e| AppError::Internal(format!("packing the export: {e}")))?;
        let mut file = tar
            .into_inner()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        use std::io::{Seek, SeekFrom};
        let len = file
            .seek(SeekFrom::End(0))
            .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(((file, len), recorded))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    // Handing out records is itself recorded; no record, no download.
    app.audit(&a.session.user, audit_action::EXPORT, {
        let mut detail = json!({ "query": query, "kind": "regulator" });
        if let (Some(d), serde_json::Value::Object(r)) = (detail.as_object_mut(), recorded) {
            d.extend(r);
        }
        detail
    })
    .await?;
    let (file, len) = tar;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"custos-export.tar\"".to_owned(),
            ),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}
