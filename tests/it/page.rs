//! The status page (`GET /` on the metrics listener) as a real browser shows it: headless
//! Chromium loads it after a job finished against the fake, and the DOM it built has the job, its
//! counts and the charts. With `[metrics] token_file`, the page is refused without the token.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it); without it the test fails
//! saying so, rather than passing without having looked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`) and a fresh
/// profile under `dir`; returns what it printed. Killed after a minute (a hung browser fails the
/// test instead of hanging it).
fn chromium(dir: &Path, args: &[&str], url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's `chromium` package \
         (apt-get install -y --no-install-recommends chromium; .ci/run does) to run the status page test"
    );
    let profile = tempfile::tempdir_in(dir).expect("profile dir");
    let out_path = dir.join("chromium.out");
    let err_path = dir.join("chromium.err");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in 60 s: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).expect("chromium's output")
}

/// The page's address, from the metrics URL the daemon publishes once it listens.
async fn page_url(env: &TestEnv) -> String {
    let started = Instant::now();
    loop {
        if let Some(url) = env.try_status_json()["metrics_url"].as_str() {
            assert!(url.starts_with("http://127.0.0.1:"), "{url}");
            return url.replace("/metrics", "/");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics URL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The row of the rendered jobs table that names `job`.
fn job_row<'a>(dom: &'a str, job: &str) -> &'a str {
    dom.split("<tr>")
        .find(|row| row.contains(&format!(">{job}</th>")))
        .and_then(|row| row.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for {job} in the page: {dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_finished_job_in_headless_chromium() {
    // A tenant with markup in its name: the browser must show it as text.
    let tenant = "<i>acme</i>";
    let env = TestEnv::new(
        fast_batch_fake(200),
        &format!(
            "[metrics]\nport = 0\n\n{FAST_BATCHES}\n[limits.default]\nrpm = 120\nitpm = 2000\notpm = 2000\n\n\
             [budgets.\"{tenant}\"]\ndaily_usd = 5\n"
        ),
    )
    .await;
    let mut body = String::new();
    for i in 0..8 {
        body.push_str(&planned_request(
            &format!("rt-{i}"),
            &format!(r#""tenant":"{tenant}","mode":"realtime","#),
        ));
        body.push('\n');
    }
    for i in 0..4 {
        body.push_str(&planned_request(
            &format!("b-{i}"),
            &format!(r#""tenant":"{tenant}","mode":"batch","#),
        ));
        body.push('\n');
    }
    env.write_job("page-demo", body.as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("page-demo", Duration::from_secs(60)).await;
    let url = page_url(&env).await;

    let dir = env.dir.path().to_owned();
    let (dom_url, shot_url) = (url.clone(), url.clone());
    let dom = tokio::task::spawn_blocking(move || chromium(&dir, &["--dump-dom"], &dom_url))
        .await
        .expect("chromium ran");
    let row = job_row(&dom, "page-demo");
    for part in [
        ">done<",
        "12/12",
        "data-label=\"pending\">0<",
        "data-label=\"in flight\">0<",
        "data-label=\"succeeded\">12<",
        "data-label=\"errored\">0<",
        "4 batch / 8 real time",
        "1 (1 ended)",
    ] {
        assert!(
            row.contains(part),
            "{part:?} missing from the job's row: {row}"
        );
    }
    assert!(dom.contains("<svg"), "charts are drawn: {dom}");
    assert!(dom.contains("<polyline"), "{dom}");
    assert!(
        dom.contains("claude-haiku-5-5"),
        "the class's charts: {dom}"
    );
    assert!(
        dom.contains("&lt;i&gt;acme&lt;/i&gt;") && !dom.contains(tenant),
        "the tenant is text, in the budgets and the spend legend: {dom}"
    );

    // A screenshot for people to look at (target/tmp/page.png): the browser rendered it.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page.png");
    let _ = std::fs::remove_file(&shot);
    let dir = env.dir.path().to_owned();
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || {
        chromium(&dir, &[&arg, "--window-size=1200,900"], &shot_url)
    })
    .await
    .expect("chromium ran");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_needs_the_metrics_token_and_other_paths_stay_404() {
    let env = TestEnv::new(
        Default::default(),
        "[metrics]\nport = 0\ntoken_file = \"page-token\"\n",
    )
    .await;
    std::fs::write(env.dir.path().join("page-token"), "page-s3cret\n").expect("token");
    let daemon = env.start_daemon();
    let url = page_url(&env).await;
    let client = reqwest::Client::new();

    let bare = client.get(&url).send().await.expect("get");
    assert_eq!(bare.status(), 401);
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
    assert!(!bare.text().await.expect("body").contains("<html"));
    let wrong = client
        .get(&url)
        .bearer_auth("page-s3creT")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);

    for path in ["/", "/status"] {
        let page = client
            .get(format!("{}{path}", url.trim_end_matches('/')))
            .bearer_auth("page-s3cret")
            .send()
            .await
            .expect("get");
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let csp = headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        let html = page.text().await.expect("body");
        assert!(
            html.contains("<meta http-equiv=\"refresh\" content=\"10\">"),
            "{html}"
        );
        assert!(html.contains("no jobs yet"), "{html}");
    }
    let metrics = client
        .get(format!("{url}metrics"))
        .bearer_auth("page-s3cret")
        .send()
        .await
        .expect("get");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("body")
            .contains("nightshift_items")
    );
    let other = client
        .get(format!("{url}nope"))
        .bearer_auth("page-s3cret")
        .send()
        .await
        .expect("get");
    assert_eq!(other.status(), 404);
    daemon.stop().await;
}
