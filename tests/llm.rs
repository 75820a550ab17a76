//! LLM-guided search against a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted
//! replies: a good reply in prose and code fences, invalid JSON, a genome that fails validation,
//! an over-budget genome, a duplicate, HTTP 429 then success, HTTP 500 until the retries run
//! out, 401. The requests' JSON, the trial log and the round files are checked, and the API key
//! appears in no file and no output.

use diffnas::genome::{Genome, ImageSpec, SearchSpace};
use diffnas::search::TrialLog;
use diffnas::search::llm::client::{Chat, ChatClient, LlmConfig, LlmError, Message};
use diffnas::search::llm::parse::{first_json, parse_reply};
use rand::SeedableRng;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: serde_json::Value,
}

struct Reply {
    status: u16,
    body: String,
}

fn completion(text: &str) -> Reply {
    Reply {
        status: 200,
        body: serde_json::json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        })
        .to_string(),
    }
}

fn status(code: u16) -> Reply {
    Reply {
        status: code,
        body: format!("{{\"error\": {{\"message\": \"scripted {code}\"}}}}"),
    }
}

/// Serve the scripted replies in order, one per connection; record what was asked.
fn serve(script: Vec<Reply>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for reply in script {
            let Ok((mut sock, _)) = listener.accept() else {
                return;
            };
            let mut r = BufReader::new(sock.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut len, mut auth) = (0usize, None);
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                let l = l.trim_end();
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            log.lock().unwrap().push(Seen {
                path,
                authorization: auth,
                body: serde_json::from_slice(&body).unwrap(),
            });
            let reason = if reply.status == 200 {
                "OK"
            } else {
                "Scripted"
            };
            let head = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 0\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.body.len()
            );
            let _ = sock.write_all(head.as_bytes());
            let _ = sock.write_all(reply.body.as_bytes());
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    });
    (base, seen)
}

/// The space `diffnas search llm` searches by default (trials override dropout, so it is
/// fixed at the proxy's 0).
fn space() -> SearchSpace {
    let mut s = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    })
    .with_budget(diffnas::genome::Budget {
        max_params: Some(4_000_000),
        max_macs: Some(200_000_000),
        min_params: None,
    });
    s.dropouts = vec![0.0];
    s
}

/// Distinct valid genomes for the scripted replies.
fn valid_genomes(n: usize) -> Vec<Genome> {
    let s = space();
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(9);
    let mut out: Vec<Genome> = Vec::new();
    let mut g = Genome::tiny_for(s.image);
    while out.len() < n {
        g = s.mutate(&g, &mut rng, 100).unwrap();
        if !out.iter().any(|o| o.hash() == g.hash()) {
            out.push(g.clone());
        }
    }
    out
}

fn json(gs: &[&Genome]) -> String {
    serde_json::to_string_pretty(&gs).unwrap()
}

#[test]
fn reply_parsing_tolerates_prose_and_fences_and_keeps_valid_candidates() {
    let g = valid_genomes(2);
    let text = format!(
        "Sure! Here are my proposals:\n```json\n{}\n```\nThey should do well.",
        json(&[&g[0], &g[1]])
    );
    let p = parse_reply(&text, &space(), &HashSet::new());
    assert_eq!(p.genomes, vec![g[0].clone(), g[1].clone()]);
    assert!(p.rejected.is_empty());
    // Wrapped in an object, one bad field, one duplicate of the past.
    let mut bad = serde_json::to_value(&g[1]).unwrap();
    bad["dropout"] = serde_json::json!(0.77);
    let text = serde_json::json!({"genomes": [g[0], bad]}).to_string();
    let seen: HashSet<String> = [g[0].hash()].into();
    let p = parse_reply(&text, &space(), &seen);
    assert!(p.genomes.is_empty());
    assert_eq!(p.rejected.len(), 2);
    assert!(
        p.rejected[0].error.contains("duplicate"),
        "{:?}",
        p.rejected
    );
    assert!(p.rejected[1].error.contains("dropout"), "{:?}", p.rejected);
    assert!(first_json("no json here [unclosed").is_none());
    let p = parse_reply("I cannot help with that.", &space(), &HashSet::new());
    assert!(p.genomes.is_empty() && p.rejected.len() == 1);
}

fn cfg(base: &str) -> LlmConfig {
    LlmConfig {
        base_url: base.into(),
        model: "test-model".into(),
        temperature: 0.5,
        max_tokens: 512,
        timeout_s: 10.0,
        api_key_env: "DIFFNAS_TEST_NO_SUCH_KEY".into(),
        max_retries: 2,
        backoff_s: 0.01,
    }
}

#[test]
fn client_errors_are_clear() {
    let (base, _) = serve(vec![status(404)]);
    let c = ChatClient::new(cfg(&base)).unwrap();
    let e = c.chat(&[Message::user("hi")]).unwrap_err();
    assert!(matches!(e, LlmError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("--llm-model"), "{e}");
    let (base, _) = serve(vec![status(400)]);
    let e = ChatClient::new(cfg(&base)).unwrap().chat(&[]).unwrap_err();
    assert!(matches!(e, LlmError::Http { status: 400, .. }), "{e}");
    let (base, _) = serve(vec![Reply {
        status: 200,
        body: "{\"not\": \"a completion\"}".into(),
    }]);
    let e = ChatClient::new(cfg(&base)).unwrap().chat(&[]).unwrap_err();
    assert!(matches!(e, LlmError::Reply { .. }), "{e}");
}

fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[test]
fn llm_search_end_to_end_with_scripted_server() {
    let g = valid_genomes(6);
    let mut over = g[5].clone();
    over.base_channels = 256;
    let mut invalid = serde_json::to_value(&g[4]).unwrap();
    invalid["encoder"][0]["channel_mult"] = serde_json::json!(7);
    let script = vec![
        // Round 0: rate limited, then a good reply in prose and fences.
        status(429),
        completion(&format!(
            "Here you go.\n```json\n{}\n```",
            json(&[&g[0], &g[1]])
        )),
        // Round 1: one valid, one over budget, one duplicate, one invalid -> re-prompt ->
        // the correction is not JSON at all.
        completion(&serde_json::json!([g[2], over, g[0], invalid]).to_string()),
        completion("Sorry, I can't produce more."),
        // Round 2: server errors until the retries run out: the search stops with an error.
        status(500),
        status(500),
        status(500),
        // (resumed) Round 2 again: good. Round 3: 401.
        completion(&json(&[&g[3], &g[4]])),
        status(401),
    ];
    let (base, seen) = serve(script);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("llm-search");
    let secret = "sk-test-DO-NOT-LEAK-4242";
    let args = |resume: bool| {
        let mut a = vec![
            "search".to_string(),
            "llm".into(),
            "--run-dir".into(),
            dir.display().to_string(),
            "--evaluator".into(),
            "stub".into(),
            "--llm-base-url".into(),
            base.clone(),
            "--llm-model".into(),
            "test-model".into(),
            "--llm-api-key-env".into(),
            "DIFFNAS_TEST_LLM_KEY".into(),
            "--rounds".into(),
            "4".into(),
            "--per-round".into(),
            "2".into(),
            "--llm-retries".into(),
            "2".into(),
            "--llm-backoff".into(),
            "0.01".into(),
            "--temperature".into(),
            "0.3".into(),
            "--device".into(),
            "flex".into(),
            // The budget of `space()`; flex alone would mean the small scale.
            "--scale".into(),
            "standard".into(),
        ];
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let run = |resume: bool| {
        Command::new(env!("CARGO_BIN_EXE_diffnas"))
            .args(args(resume))
            .env("DIFFNAS_TEST_LLM_KEY", secret)
            .output()
            .unwrap()
    };
    let first = run(false);
    let err1 = String::from_utf8_lossy(&first.stderr).into_owned();
    assert_eq!(first.status.code(), Some(1), "{err1}");
    assert!(err1.contains("gave up after 3 attempts"), "{err1}");
    let log = TrialLog::open(&dir).unwrap().records;
    let hashes: Vec<&str> = log.iter().map(|r| r.hash.as_str()).collect();
    assert_eq!(
        hashes,
        vec![g[0].hash(), g[1].hash(), g[2].hash()],
        "{err1}"
    );
    assert_eq!(log[2].origin, "llm round 1");

    let second = run(true);
    let err2 = String::from_utf8_lossy(&second.stderr).into_owned();
    assert_eq!(second.status.code(), Some(1), "{err2}");
    assert!(
        err2.contains("HTTP 401") && err2.contains("DIFFNAS_TEST_LLM_KEY"),
        "{err2}"
    );
    let log = TrialLog::open(&dir).unwrap().records;
    let hashes: Vec<String> = log.iter().map(|r| r.hash.clone()).collect();
    let want: Vec<String> = [0, 1, 2, 3, 4].iter().map(|&i| g[i].hash()).collect();
    assert_eq!(hashes, want, "every trial once, in order");
    assert!(log.iter().all(|r| r.score().is_some()));

    // What the server was asked.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 9);
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(
            s.authorization.as_deref(),
            Some(&*format!("Bearer {secret}"))
        );
        assert_eq!(s.body["model"], "test-model");
        assert_eq!(s.body["temperature"], 0.3);
        assert_eq!(s.body["messages"][0]["role"], "system");
    }
    let user = |i: usize| {
        seen[i].body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(user(0).contains("No architecture has been evaluated yet"));
    // Round 1's prompt carries round 0's results (memory).
    for h in [g[0].hash(), g[1].hash()] {
        assert!(user(2).contains(&h), "memory lacks {h}");
    }
    assert!(user(2).contains("stub = "));
    // The re-prompt: the first reply as the assistant's turn, then the errors.
    let re = &seen[3].body["messages"];
    assert_eq!(re.as_array().unwrap().len(), 4);
    assert_eq!(re[2]["role"], "assistant");
    let correction = re[3]["content"].as_str().unwrap();
    assert!(correction.contains("max_params"), "{correction}");
    assert!(correction.contains("duplicate"), "{correction}");
    assert!(correction.contains("channel_mult"), "{correction}");
    // Round 2's prompt (after the resume) lists the rejected proposals with their errors.
    assert!(user(7).contains("rejected before training"), "{}", user(7));

    // Round files: prompts and raw replies, never the key.
    let r1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("llm/round-001.json")).unwrap()).unwrap();
    assert_eq!(r1["exchanges"].as_array().unwrap().len(), 2);
    assert_eq!(r1["proposals"].as_array().unwrap().len(), 1);
    assert_eq!(r1["rejected"].as_array().unwrap().len(), 4);
    assert!(
        files_containing(&dir, secret).is_empty(),
        "the key leaked into the run directory"
    );
    assert!(!err1.contains(secret) && !err2.contains(secret));
    assert!(!String::from_utf8_lossy(&second.stdout).contains(secret));

    // The LLM search goes on one chart and in one table with a random search on the same
    // evaluator.
    let random = work.path().join("random");
    let bin = env!("CARGO_BIN_EXE_diffnas");
    let o = Command::new(bin)
        .args([
            "search",
            "random",
            "--evaluator",
            "stub",
            "--trials",
            "5",
            "--scale",
        ])
        .args(["standard", "--device", "flex", "--run-dir"])
        .arg(&random)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin)
        .arg("report")
        .arg(&dir)
        .arg("--compare")
        .arg(&random)
        .args(["--target", "100"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| llm | 1 |") && md.contains("| random | 1 |"),
        "{md}"
    );
    assert!(dir.join("best_vs_trials_over_seeds.png").is_file());
}

/// A search whose every proposal is rejected trains nothing: it fails (exit 1) and says why,
/// with the rejections counted by kind, instead of ending with nothing written.
#[test]
fn llm_search_with_every_proposal_rejected_fails_with_counted_reasons() {
    let g = valid_genomes(2);
    let mut over = g[0].clone();
    over.base_channels = 256;
    let mut outside = serde_json::to_value(&g[1]).unwrap();
    outside["encoder"][0]["channel_mult"] = serde_json::json!(7);
    let script = vec![
        // Round 0: over budget, then a correction with no JSON.
        completion(&json(&[&over])),
        completion("I cannot do that."),
        // Round 1: outside the space, then over budget again.
        completion(&serde_json::json!([outside]).to_string()),
        completion(&json(&[&over])),
    ];
    let (base, _) = serve(script);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("rejected");
    let o = Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args([
            "search",
            "llm",
            "--run-dir",
            dir.to_str().unwrap(),
            "--evaluator",
            "stub",
            "--llm-base-url",
            &base,
            "--rounds",
            "2",
            "--per-round",
            "1",
            "--device",
            "flex",
            "--scale",
            "standard",
        ])
        .env("OPENAI_API_KEY", "unused")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no trial of the search"), "{err}");
    for line in [
        "2 LLM proposal(s) rejected as genomes over the budget",
        "1 LLM proposal(s) rejected as genomes outside the search space",
        "1 LLM proposal(s) rejected as replies with no JSON",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
    assert!(!err.contains("report not written"), "{err}");
    assert!(TrialLog::open(&dir).unwrap().records.is_empty());
}

#[test]
fn llm_search_without_endpoint_says_so() {
    let o = Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args([
            "search",
            "llm",
            "--evaluator",
            "stub",
            "--run-dir",
            "/nonexistent/x",
        ])
        .env_remove("DIFFNAS_LLM_BASE_URL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--llm-base-url") && e.contains("search random"),
        "{e}"
    );
}
