//! The Prometheus endpoint (`[metrics] port`, off by default; 127.0.0.1 only): items by state,
//! real-time calls by model and outcome (429s and 529s among them), tokens and cost by tenant,
//! quota bucket levels and limits per model class, and batches by state.
//!
//! Counts that live in the database (items, batches, the ledger's rollups) are read at each
//! scrape through a read-only connection; call counters and bucket levels come from the daemon's
//! memory. [`render`] is pure, so the text format is unit-tested without a server.
//!
//! The same listener serves the status page (`GET /` and `/status`, [`super::page`]), read the
//! same way and behind the same token.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::page::{self, PageFacts};
use crate::config::Live;
use crate::lanes::admission::Rules;
use crate::lanes::calls::CallCounters;
use crate::policy::quota::ClassSnapshot;
use crate::policy::routing::Routing;
use crate::store::facts::{self, TenantTotals};

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Scrape {
    pub items: Vec<(String, i64)>,
    pub batches: Vec<(String, i64)>,
    pub tenants: Vec<TenantTotals>,
    pub calls: Vec<((String, &'static str), u64)>,
    /// Each organization's classes: (organization, class).
    pub classes: Vec<(String, ClassSnapshot)>,
    /// Every route's state.
    pub routes: Vec<crate::policy::routing::RouteSnapshot>,
    /// Told whatever the store's state (a locked database leaves the parts above empty).
    pub health: crate::lanes::health::Health,
}

/// The Prometheus text format (version 0.0.4) of a scrape.
pub fn render(s: &Scrape) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "nightshift_items",
        "gauge",
        "Items of all jobs by state.",
        s.items
            .iter()
            .map(|(state, n)| (labels(&[("state", state)]), *n as f64))
            .collect(),
    );
    family(
        "nightshift_api_calls_total",
        "counter",
        "Real-time Messages calls by model and outcome since the daemon started (rate_limited_429, overloaded_529, ...).",
        s.calls
            .iter()
            .map(|((model, outcome), n)| {
                (labels(&[("model", model), ("outcome", outcome)]), *n as f64)
            })
            .collect(),
    );
    let tenant_samples = |f: &dyn Fn(&TenantTotals) -> i64| -> Vec<(String, f64)> {
        s.tenants
            .iter()
            .map(|t| (labels(&[("tenant", &t.tenant)]), f(t) as f64))
            .collect()
    };
    family(
        "nightshift_billed_requests_total",
        "counter",
        "Billed calls (real-time answers and succeeded batch requests) by tenant, from the ledger.",
        tenant_samples(&|t| t.totals.requests),
    );
    let mut tokens = Vec::new();
    for t in &s.tenants {
        for (kind, n) in [
            ("input", t.totals.input_tokens),
            ("output", t.totals.output_tokens),
            ("cache_creation_input", t.totals.cache_creation_input_tokens),
            ("cache_read_input", t.totals.cache_read_input_tokens),
        ] {
            tokens.push((labels(&[("tenant", &t.tenant), ("kind", kind)]), n as f64));
        }
    }
    family(
        "nightshift_tokens_total",
        "counter",
        "Billed tokens by tenant and kind, from the ledger.",
        tokens,
    );
    family(
        "nightshift_cost_usd_total",
        "counter",
        "Cost in US dollars by tenant, from the ledger (models without a price are not in it).",
        s.tenants
            .iter()
            .map(|t| {
                (
                    labels(&[("tenant", &t.tenant)]),
                    t.totals.cost_micro_usd as f64 / 1e6,
                )
            })
            .collect(),
    );
    family(
        "nightshift_cache_saved_usd",
        "gauge",
        "What the prompt cache saved so far, US dollars by tenant, from the ledger: the calls' cost had their cache tokens been plain input, less their cost (a gauge: it falls when a write costs more than reads repay).",
        s.tenants
            .iter()
            .map(|t| {
                (
                    labels(&[("tenant", &t.tenant)]),
                    t.totals.cache_saved_micro_usd as f64 / 1e6,
                )
            })
            .collect(),
    );
    family(
        "nightshift_cache_hit_ratio",
        "gauge",
        "Share of the prompt-cache tokens read rather than written, by tenant, from the ledger (tenants that used the cache).",
        s.tenants
            .iter()
            .filter_map(|t| {
                let hit = crate::policy::prices::cache_hit_ratio(
                    t.totals.cache_read_input_tokens,
                    t.totals.cache_creation_input_tokens,
                )?;
                Some((labels(&[("tenant", &t.tenant)]), hit))
            })
            .collect(),
    );
    let dims =
        |f: &dyn Fn(&crate::policy::quota::DimSnapshot) -> Option<f64>| -> Vec<(String, f64)> {
            let mut out = Vec::new();
            for (org, c) in &s.classes {
                for d in &c.dims {
                    if let Some(v) = f(d) {
                        out.push((
                            labels(&[("organization", org), ("class", &c.class), ("dim", d.dim)]),
                            v,
                        ));
                    }
                }
            }
            out
        };
    family(
        "nightshift_quota_level",
        "gauge",
        "What the quota controller believes is in the API's bucket now, per model class and dimension.",
        dims(&|d| Some(d.level)),
    );
    family(
        "nightshift_quota_capacity",
        "gauge",
        "The bucket's capacity (burst) as learned from the API's headers.",
        dims(&|d| Some(d.capacity)),
    );
    family(
        "nightshift_quota_limit_per_minute",
        "gauge",
        "The limit in force per minute (configured, or learned from the headers).",
        dims(&|d| d.limit_per_minute),
    );
    family(
        "nightshift_quota_concurrency",
        "gauge",
        "Calls the class may have in flight (adaptive).",
        s.classes
            .iter()
            .map(|(org, c)| {
                let l = labels(&[("organization", org), ("class", &c.class)]);
                (l, c.concurrency as f64)
            })
            .collect(),
    );
    family(
        "nightshift_quota_in_flight",
        "gauge",
        "Calls of the class in flight.",
        s.classes
            .iter()
            .map(|(org, c)| {
                let l = labels(&[("organization", org), ("class", &c.class)]);
                (l, c.in_flight as f64)
            })
            .collect(),
    );
    family(
        "nightshift_route_usable",
        "gauge",
        "1 while a route takes calls (active, learning or deprioritised), 0 while it is paused or cannot be reached; `owner` says whose limit paused it.",
        s.routes
            .iter()
            .map(|r| {
                let usable = !matches!(r.state, "paused" | "unreachable");
                let l = labels(&[
                    ("route", &r.name),
                    ("state", r.state),
                    ("owner", r.owner.unwrap_or("")),
                ]);
                (l, if usable { 1.0 } else { 0.0 })
            })
            .collect(),
    );
    family(
        "nightshift_batches",
        "gauge",
        "Message Batches by state (submitting, in_progress, canceling, ended, failed).",
        s.batches
            .iter()
            .map(|(state, n)| (labels(&[("state", state)]), *n as f64))
            .collect(),
    );
    let h = &s.health;
    family(
        "nightshift_health_trouble",
        "gauge",
        "1 while a part is in trouble (store: the database takes no writes; results: results cannot be written; api: the API cannot be reached).",
        crate::lanes::health::PARTS
            .iter()
            .map(|part| {
                let trouble = h.troubles.contains_key(*part);
                (labels(&[("part", part)]), f64::from(u8::from(trouble)))
            })
            .collect(),
    );
    family(
        "nightshift_health_trouble_since_seconds",
        "gauge",
        "When each current trouble began, Unix seconds.",
        h.troubles
            .iter()
            .map(|(part, t)| (labels(&[("part", part)]), (t.since / 1000) as f64))
            .collect(),
    );
    family(
        "nightshift_disk_free_bytes",
        "gauge",
        "Free bytes on the data dir's file system.",
        h.disk_free_bytes
            .map(|b| vec![(String::new(), b as f64)])
            .unwrap_or_default(),
    );
    family(
        "nightshift_disk_low",
        "gauge",
        "1 while the data dir's free space is under daemon.disk_low_mb.",
        vec![(String::new(), f64::from(u8::from(h.disk_low)))],
    );
    out
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Where a scrape reads from.
#[derive(Clone)]
pub struct Sources {
    pub store: crate::store::Location,
    pub calls: Arc<CallCounters>,
    pub routing: Arc<Mutex<Routing>>,
    pub health: crate::lanes::health::Board,
    pub data_dir: PathBuf,
    pub disk_low_bytes: u64,
    /// For the status page: where results files are (the jobs name theirs) and the budgets in
    /// force (a reload changes them).
    pub results_dir: PathBuf,
    pub rules: Live<Rules>,
}

impl Sources {
    fn gather(&self) -> anyhow::Result<Scrape> {
        let (classes, routes) = {
            let mut routing = crate::lock(&self.routing);
            let classes = routing
                .groups(Instant::now())
                .into_iter()
                .flat_map(|g| {
                    let group = g.group;
                    g.classes.into_iter().map(move |c| (group.clone(), c))
                })
                .collect();
            (classes, routing.routes(Instant::now()))
        };
        let health =
            crate::daemon::health::current(&self.health, &self.data_dir, self.disk_low_bytes);
        let mut scrape = Scrape {
            calls: self.calls.snapshot(),
            classes,
            routes,
            health,
            ..Scrape::default()
        };
        // A locked or unreadable database leaves its parts out; the health says why.
        let read = crate::store::open_read_only(&self.store).and_then(|conn| {
            Ok((
                facts::items_by_state(&conn)?,
                facts::batches_by_state(&conn)?,
                facts::tenant_totals(&conn)?,
            ))
        });
        match read {
            Ok((items, batches, tenants)) => {
                scrape.items = items;
                scrape.batches = batches;
                scrape.tenants = tenants;
            }
            Err(e) => tracing::debug!(error = %e, "metrics: the database cannot be read now"),
        }
        Ok(scrape)
    }

    /// The status page's facts at `now` (Unix ms).
    fn page(&self, now: i64) -> PageFacts {
        let limits = crate::lock(&self.routing).class_totals(Instant::now());
        let health =
            crate::daemon::health::current(&self.health, &self.data_dir, self.disk_low_bytes);
        let budgets = &self.rules.get().budgets;
        // A locked or unreadable database leaves the store's part out, and the page says why.
        let stored = crate::store::open_read_only(&self.store)
            .and_then(|conn| {
                let daemon = crate::store::leases::local_daemon_id(&self.data_dir);
                page::read(&conn, &daemon, &self.results_dir, budgets, &limits, now)
            })
            .map_err(|e| {
                tracing::debug!(error = %e, "status page: the database cannot be read now");
                e.to_string()
            });
        PageFacts {
            now,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            health,
            stored,
        }
    }
}

/// The bearer token a scrape must send (`[metrics] token_file`). Never printed.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Reads the token from its file (whitespace around it is not part of it).
    pub fn read(path: &std::path::Path) -> std::io::Result<Token> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(std::io::Error::other("the file is empty"));
        }
        Ok(Token(token.into()))
    }

    /// Whether an `authorization` header carries this token (compared in constant time).
    pub fn allows(&self, header: Option<&hyper::header::HeaderValue>) -> bool {
        let Some(given) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Serves `GET /metrics` and the status page (`GET /`, `GET /status`) on `listener` until `stop`;
/// with a `token`, only to requests that send it (`Authorization: Bearer …`).
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    token: Option<Token>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (sources, token) = (sources.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (sources, token) = (sources.clone(), token.clone());
                async move { Ok::<_, Infallible>(answer(request, sources, token).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    sources: Sources,
    token: Option<Token>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let wants_page = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => false,
        (&hyper::Method::GET, "/" | "/status") => true,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "nightshift serves GET /metrics and its status page at GET /\n".into(),
            );
        }
    };
    if let Some(token) = token
        && !token.allows(request.headers().get(hyper::header::AUTHORIZATION))
    {
        let mut response = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "nightshift's metrics and status page need `Authorization: Bearer <token>` ([metrics] token_file)\n"
                .into(),
        );
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    if wants_page {
        let now = crate::store::now_ms();
        return match tokio::task::spawn_blocking(move || sources.page(now)).await {
            Ok(facts) => {
                let mut response = reply(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page::render(&facts),
                );
                let headers = response.headers_mut();
                for (name, value) in PAGE_HEADERS {
                    headers.insert(name, hyper::header::HeaderValue::from_static(value));
                }
                response
            }
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("the status page failed: {e}\n"),
            ),
        };
    }
    match tokio::task::spawn_blocking(move || sources.gather()).await {
        Ok(Ok(scrape)) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&scrape),
        ),
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("metrics unavailable: {e:#}\n"),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("metrics failed: {e}\n"),
        ),
    }
}

/// The status page loads nothing and runs nothing: the policy says so to the browser too, so a
/// string that slipped past the escaping could not run or fetch. Never cached: it is live.
const PAGE_HEADERS: [(hyper::header::HeaderName, &str); 4] = [
    (
        hyper::header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (hyper::header::CACHE_CONTROL, "no-store"),
    (hyper::header::REFERRER_POLICY, "no-referrer"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_token_itself_is_allowed() {
        let token = Token("abc123".into());
        let header = |v: &str| hyper::header::HeaderValue::from_str(v).expect("header");
        assert!(token.allows(Some(&header("Bearer abc123"))));
        assert!(!token.allows(Some(&header("Bearer abc124"))));
        assert!(!token.allows(Some(&header("Bearer abc1234"))));
        assert!(!token.allows(Some(&header("Basic abc123"))));
        assert!(!token.allows(None));
        assert_eq!(format!("{token:?}"), "Token(…)", "never printed");
    }

    #[test]
    fn the_text_format_has_help_type_and_escaped_labels() {
        let scrape = Scrape {
            items: vec![("succeeded".into(), 3)],
            tenants: vec![TenantTotals {
                tenant: "acme \"eu\"".into(),
                totals: crate::store::ledger::Sums {
                    requests: 2,
                    input_tokens: 10,
                    output_tokens: 20,
                    cost_micro_usd: 1_500,
                    cache_read_input_tokens: 900,
                    cache_creation_input_tokens: 100,
                    cache_saved_micro_usd: 2_500,
                    ..Default::default()
                },
            }],
            calls: vec![(("claude-haiku-5-5".into(), "rate_limited_429"), 4)],
            ..Default::default()
        };
        let text = render(&scrape);
        assert!(text.contains("# TYPE nightshift_items gauge\n"), "{text}");
        assert!(
            text.contains("nightshift_items{state=\"succeeded\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "nightshift_api_calls_total{model=\"claude-haiku-5-5\",outcome=\"rate_limited_429\"} 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("nightshift_cost_usd_total{tenant=\"acme \\\"eu\\\"\"} 0.0015\n"),
            "{text}"
        );
        assert!(
            text.contains("nightshift_cache_saved_usd{tenant=\"acme \\\"eu\\\"\"} 0.0025\n"),
            "{text}"
        );
        assert!(
            text.contains("nightshift_cache_hit_ratio{tenant=\"acme \\\"eu\\\"\"} 0.9\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "nightshift_tokens_total{tenant=\"acme \\\"eu\\\"\",kind=\"output\"} 20\n"
            ),
            "{text}"
        );
    }
}
