//! Bad input: each bad line is reported with file, line and field; the valid items complete.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::FakeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_line_is_reported_and_the_rest_runs() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let mut lines: Vec<Vec<u8>> = vec![
        request("ok-1", "first").into_bytes(),                                       // 1
        b"{\"custom_id\": \"broken\", \"params\": {".to_vec(),                         // 2 malformed JSON
        br#"{"custom_id":"no-params"}"#.to_vec(),                                       // 3 missing params
        br#"{"custom_id":"no-model","params":{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}}"#.to_vec(), // 4
        request("ok-1", "a repeat").into_bytes(),                                   // 5 duplicate custom_id
        request("bad id with spaces", "x").into_bytes(),                             // 6 invalid custom_id
        b"{\"custom_id\":\"latin1\",\"params\":\"caf\xe9\"}".to_vec(),                 // 7 not UTF-8
        Vec::new(),                                                                  // 8 empty line
        request("ok-2", "second").into_bytes(),                                      // 9
        br#"{"custom_id":"typo","prams":{}}"#.to_vec(),                                 // 10 unknown field
        request(&"x".repeat(65), "too long").into_bytes(),                           // 11 custom_id too long
        request("ok-3", "third").into_bytes(),                                       // 12
    ];
    let mut body = Vec::new();
    for line in lines.drain(..) {
        body.extend_from_slice(&line);
        body.push(b'\n');
    }
    env.write_job("messy", &body);
    env.write_job("empty", b"");

    let daemon = env.start_daemon();
    let messy = env.wait_done("messy", Duration::from_secs(60)).await;
    let empty = env.wait_done("empty", Duration::from_secs(60)).await;
    daemon.stop().await;

    assert_eq!(messy.counts.total, 12, "every line is an item");
    assert_eq!(messy.counts.succeeded, 3);
    assert_eq!(messy.counts.errored, 9);
    let results = env.results("messy");
    assert_eq!(results.len(), 12, "one result line per input line");
    let mut expected: Vec<String> = ["ok-1", "ok-2", "ok-3", "no-params", "no-model", "typo"]
        .map(String::from)
        .to_vec();
    expected.extend([2, 5, 6, 7, 8, 11].map(|n| format!("nightshift:line:{n}")));
    assert_each_once(&results, &expected);

    // Each error names the file, the line and (where there is one) the field.
    let expect: [(u64, Option<&str>, &str); 9] = [
        (2, None, "not valid JSON"),
        (3, Some("params"), "missing"),
        (4, Some("params.model"), "missing"),
        (5, Some("custom_id"), "repeats line 1"),
        (6, Some("custom_id"), "1-64 characters"),
        (7, None, "UTF-8"),
        (8, None, "empty"),
        (10, Some("prams"), "not a known field"),
        (11, Some("custom_id"), "1-64 characters"),
    ];
    let errored: Vec<&serde_json::Value> = results
        .iter()
        .filter(|r| r["result"]["type"] == "errored")
        .collect();
    for (line, field, words) in expect {
        let hit = errored
            .iter()
            .find(|r| r["result"]["error"]["error"]["details"]["line"] == line);
        let hit = hit.unwrap_or_else(|| panic!("no errored result for line {line}"));
        let error = &hit["result"]["error"]["error"];
        let message = error["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!("messy.jsonl line {line}")),
            "{message}"
        );
        assert!(message.contains(words), "line {line}: {message}");
        assert_eq!(error["details"]["field"].as_str(), field, "line {line}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    // Unreadable or repeated custom_ids get one naming their file line (never null: the SDKs'
    // result type wants a string; the colon is outside what a custom_id may hold); readable ones
    // keep theirs.
    assert!(results.iter().all(|r| r["custom_id"].is_string()));
    let mut by_line: Vec<&str> = results
        .iter()
        .filter_map(|r| r["custom_id"].as_str())
        .filter(|id| id.starts_with("nightshift:line:"))
        .collect();
    by_line.sort_by_key(|id| id["nightshift:line:".len()..].parse::<u32>().ok());
    assert_eq!(
        by_line,
        [2, 5, 6, 7, 8, 11].map(|n| format!("nightshift:line:{n}")),
        "lines 2, 5, 6, 7, 8 and 11 have no usable custom_id"
    );

    // `nightshift job` lists the errored lines and why.
    let out = env.cli(&["job", "messy"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("messy.jsonl line 4: field `params.model`: is missing"),
        "{text}"
    );
    assert!(text.contains("repeats line 1"), "{text}");

    // The empty file is a job with nothing to do, and says so.
    assert_eq!(empty.counts.total, 0);
    assert_eq!(empty.state, "done");
    assert!(env.results("empty").is_empty());
    let job = env.job_json("empty");
    assert!(
        job["note"].as_str().unwrap_or_default().contains("empty"),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_never_taken_twice_and_a_name_clash_is_rejected() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let (ids, body) = job_of("once", 5);
    env.write_job("once", &body);
    let daemon = env.start_daemon();
    env.wait_done("once", Duration::from_secs(60)).await;
    daemon.stop().await;

    // The same file again (say, a copy restored from backup), and the daemon restarted.
    env.write_job("once", &body);
    let daemon = env.start_daemon();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Different content under the same name.
    let (_, other) = job_of("other", 3);
    env.write_job("once", &other);
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;

    assert_each_once(&env.results("once"), &ids);
    assert_eq!(env.fake.stats().messages_accepted, 5, "nothing sent twice");
    let status = env.status_json();
    assert_eq!(status["jobs"].as_array().map(Vec::len), Some(1));
    let rejected = status["rejected_files"].as_array().expect("rejected_files");
    assert_eq!(rejected.len(), 1, "{status}");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("already taken in")
    );
    assert!(env.jobs_dir().join("rejected").join("once.jsonl").exists());
}

/// Lines intake takes but the API's parser refuses (here: nesting deeper than the fake's parser
/// goes) make the whole batch create answer 400. The batch is split by halves until the two
/// culprits stand alone: they are errored naming their lines, the other 200 succeed, and no
/// create body is ever sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_api_refuses_is_split_and_only_the_culprits_fail() {
    let fake = FakeConfig {
        max_json_depth: 32,
        ..fast_batch_fake(200)
    };
    let env = TestEnv::new(fake, FAST_BATCHES).await;
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let (bad_at, mut body, mut good) = ([37usize, 150], String::new(), Vec::new());
    for line_no in 1..=202 {
        if bad_at.contains(&line_no) {
            body.push_str(&format!(
                r#"{{"custom_id":"deep-{line_no}","mode":"batch","params":{{"model":"claude-haiku-5-5","max_tokens":16,"metadata":{{"user_id":"u","x":{deep}}},"messages":[{{"role":"user","content":"hi"}}]}}}}"#
            ));
        } else {
            let id = format!("good-{line_no:03}");
            body.push_str(&planned_request(&id, r#""mode":"batch","#));
            good.push(id);
        }
        body.push('\n');
    }
    env.write_job("corpus", body.as_bytes());
    let daemon = env.start_daemon();
    let job = env.wait_done("corpus", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert_eq!((job.counts.succeeded, job.counts.errored), (200, 2));
    let results = env.results("corpus");
    let mut expected = good.clone();
    expected.extend(bad_at.iter().map(|n| format!("deep-{n}")));
    let by_id = assert_each_once(&results, &expected);
    for id in &good {
        assert_eq!(by_id[id]["result"]["type"], "succeeded", "{id}");
    }
    for n in bad_at {
        let error = &by_id[&format!("deep-{n}")]["result"]["error"]["error"];
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().expect("a message");
        assert!(message.contains(&format!("line {n} of")), "{message}");
        assert!(message.contains("corpus.jsonl"), "{message}");
        assert!(
            message.contains("error parsing the body"),
            "quotes the API: {message}"
        );
    }
    let stats = env.fake.stats();
    assert_eq!(
        stats.repeated_batch_creates, 0,
        "a refused body is never sent again"
    );
    assert_eq!(
        stats.batch_succeeded, 200,
        "each good request processed once"
    );
    assert!(
        stats.invalid_4xx >= 3,
        "the whole batch, then halves, were refused"
    );
}

/// What the API cannot read at all is caught at intake, naming the field: a number no double
/// holds, 10,000-deep nesting, a key written twice. These never reach a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_api_cannot_parse_is_errored_at_intake_naming_the_field() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let lines = [
        request("ok-1", "fine"),
        r#"{"custom_id":"huge","mode":"batch","params":{"model":"claude-haiku-5-5","max_tokens":16,"temperature":1e999,"messages":[{"role":"user","content":"hi"}]}}"#.to_owned(),
        format!(r#"{{"custom_id":"nested","params":{{"model":"claude-haiku-5-5","max_tokens":16,"metadata":{deep},"messages":[{{"role":"user","content":"hi"}}]}}}}"#),
        r#"{"custom_id":"twice","params":{"model":"claude-haiku-5-5","max_tokens":0,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}"#.to_owned(),
    ];
    env.write_job("odd", (lines.join("\n") + "\n").as_bytes());
    let daemon = env.start_daemon();
    let job = env.wait_done("odd", Duration::from_secs(30)).await;
    daemon.stop().await;
    assert_eq!((job.counts.succeeded, job.counts.errored), (1, 3));
    let results = env.results("odd");
    let by_id = assert_each_once(
        &results,
        &["ok-1", "huge", "nested", "twice"].map(String::from),
    );
    for (id, words) in [
        ("huge", "line 2: field `params.temperature`"),
        ("nested", "line 3: field `params.metadata[0]"),
        (
            "twice",
            "line 4: field `params.max_tokens`: is written twice",
        ),
    ] {
        let message = by_id[id]["result"]["error"]["error"]["message"]
            .as_str()
            .expect("a message");
        assert!(message.contains(words), "{id}: {message}");
    }
    assert_eq!(env.fake.stats().batches_created, 0);
}

/// A job file saved with a UTF-8 byte order mark loses no line (before: line 1 was "not valid
/// JSON").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_costs_no_line() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let (ids, body) = job_of("bom", 2);
    env.write_job("bom", &[b"\xEF\xBB\xBF".as_slice(), &body].concat());
    let daemon = env.start_daemon();
    let job = env.wait_done("bom", Duration::from_secs(30)).await;
    daemon.stop().await;
    assert_eq!((job.counts.succeeded, job.counts.errored), (2, 0));
    assert_each_once(&env.results("bom"), &ids);
}
