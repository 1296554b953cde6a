//! LoRA adapter tenants (`engine: {kind: adapter, of, adapter}`) against the simulated engine:
//! one engine serves its base model and every adapter of the node, alone and shared, and a
//! step costs more for each distinct adapter in its batch, as the engine's timing model says.

use multitenant::events::{read_stream, Event};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::Field;

use crate::support::{read_summary, run_experiment_printing, tenant_in};

/// The base engine's decode step, and what each distinct adapter in a batch adds to it.
const STEP_US: f64 = 4_000.0;
const LORA_US: f64 = 4_000.0;

#[test]
fn adapters_share_their_base_engine_alone_and_together() {
    let tmp = tempfile::tempdir().expect("tmp");
    let yaml = format!(
        "name: lora\nlauncher: {{kind: local}}\nworkloads:\n  w:\n    arrival: {{kind: constant, rate: 8}}\n    data: {{prompt_tokens: 32, output_tokens: 12}}\n    warmup: 0s\n    duration: 3s\nnodes:\n  - name: local\n    trials: [solo, mps]\n    tenants:\n      - {{name: base, workload: w, port: 18491, engine: {{kind: simulated, model: llama, timing: {{max_batch: 64, prefill_us_per_token: 0, decode_step_us: {STEP_US}, decode_step_us_per_seq: 0, lora_step_us_per_adapter: {LORA_US}}}}}}}\n      - {{name: sql, workload: w, engine: {{kind: adapter, of: base, adapter: hub/sql-lora}}}}\n      - {{name: chat, workload: w, engine: {{kind: adapter, of: base, adapter: hub/chat-lora, model: chat-v2}}}}\n"
    );
    let (dir, printed) = run_experiment_printing(tmp.path(), "lora", &yaml);
    let node = dir.join("nodes/local");

    // Measured alone, an adapter runs in its base's engine, which loads every adapter.
    for trial in ["solo-base", "solo-sql", "solo-chat", "mps"] {
        let agent = read_stream(&node.join(trial).join("agent.jsonl")).expect("agent stream");
        let starts: Vec<(String, String)> = agent
            .events
            .iter()
            .filter_map(|l| match &l.event {
                Event::Engine(e) if e.state == multitenant::events::EngineState::Starting => {
                    Some((e.tenant.clone(), e.detail.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            starts,
            [(
                "base".to_owned(),
                "simulated with 2 LoRA adapters".to_owned()
            )],
            "{trial}: one engine, the base's"
        );
        assert!(node.join(trial).join("base.engine.jsonl").is_file());
        for adapter in ["sql", "chat"] {
            assert!(
                !node
                    .join(trial)
                    .join(format!("{adapter}.engine.jsonl"))
                    .exists(),
                "{trial}: an adapter has no engine of its own"
            );
        }
    }

    let summary = read_summary(&dir);
    let tpot_p50 = |trial: &str, tenant: &str| {
        let t = tenant_in(&summary, trial, tenant);
        assert_eq!(
            (t.metrics.completed, t.metrics.failed),
            (24, 0),
            "{trial}/{tenant}: every request answered by the name it sent"
        );
        t.metrics.tpot_ms.expect("tpot").p50
    };
    // Alone, the base model's batch holds no adapter; an adapter's batch holds one.
    let base_alone = tpot_p50("solo-base", "base");
    let sql_alone = tpot_p50("solo-sql", "sql");
    let step_ms = STEP_US / 1e3;
    let lora_step_ms = (STEP_US + LORA_US) / 1e3;
    assert!(
        (step_ms..step_ms + 1.5).contains(&base_alone),
        "base alone: TPOT p50 {base_alone} ms, its step {step_ms} ms"
    );
    assert!(
        (lora_step_ms..lora_step_ms + 1.5).contains(&sql_alone),
        "sql alone: TPOT p50 {sql_alone} ms, a step with one adapter {lora_step_ms} ms"
    );
    let chat = tenant_in(&summary, "solo-chat", "chat");
    assert_eq!(chat.model, "chat-v2");
    assert_eq!(chat.engine, "adapter");
    assert_eq!(chat.served_by.as_deref(), Some("base"));
    assert_eq!(tenant_in(&summary, "solo-base", "base").served_by, None);
    // Its engine's own figures come from its base's engine-metrics stream.
    let server = chat.server.expect("the base engine's /metrics");
    assert!(server.samples > 0, "{server:?}");
    assert!(server.prefix_cache_hit_rate.is_some(), "{server:?}");

    // Together, every batch that holds both adapters costs both: each tenant is slowed against
    // its own solo trial, the base model too.
    for tenant in ["base", "sql", "chat"] {
        let shared = tenant_in(&summary, "mps", tenant);
        let slowdown = shared.slowdown.expect("a solo baseline");
        assert!(
            slowdown.tpot_p50.is_some_and(|r| r > 1.1),
            "mps/{tenant}: {slowdown:?}"
        );
    }
    assert!(
        printed.contains("mps: base's engine serves base, chat, sql"),
        "the terminal says whose engine is shared:\n{printed}"
    );
    assert!(
        printed.contains("engine: local/chat: a LoRA adapter (chat-v2) in base's engine\n"),
        "the terminal names each adapter's engine once:\n{printed}"
    );
    assert_eq!(printed.matches("engine: local/sql:").count(), 1);
    // summary.csv says which engine served each row's tenant.
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("summary.csv");
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let served_by = header
        .iter()
        .position(|c| *c == "served_by")
        .expect("served_by column");
    let served: Vec<(&str, &str)> = csv
        .lines()
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row.split(',').collect();
            (cells[4], cells[served_by])
        })
        .filter(|(_, by)| !by.is_empty())
        .collect();
    assert_eq!(
        served.len(),
        4,
        "sql and chat, alone and shared: {served:?}"
    );
    assert!(served
        .iter()
        .all(|(t, by)| ["sql", "chat"].contains(t) && *by == "base"));
    // So does each request row of the Parquet export.
    let out = dir.join("export");
    coordinator::export::export_parquet(&dir, &out).expect("export");
    let reader = SerializedFileReader::new(
        std::fs::File::open(out.join("requests.parquet")).expect("requests.parquet"),
    )
    .expect("a Parquet file");
    let mut by_tenant = std::collections::BTreeMap::new();
    for row in reader {
        let row = row.expect("row");
        let field = |name: &str| {
            row.get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        let Field::Str(tenant) = field("tenant") else {
            panic!("tenant")
        };
        let served_by = match field("served_by") {
            Field::Str(base) => Some(base),
            Field::Null => None,
            other => panic!("served_by: {other:?}"),
        };
        by_tenant
            .entry(tenant)
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(served_by);
    }
    let base = Some("base".to_owned());
    assert_eq!(
        by_tenant.into_iter().collect::<Vec<_>>(),
        [
            ("base".to_owned(), [None].into()),
            ("chat".to_owned(), [base.clone()].into()),
            ("sql".to_owned(), [base].into()),
        ]
    );
}

/// `agent sim-engine --adapter …` serves adapters beside its model, as vLLM with
/// `--lora-modules` does, for pointing other tools at; a name served twice is refused.
#[tokio::test]
async fn the_standalone_simulated_engine_serves_the_adapters_it_is_given() {
    use tokio::io::AsyncBufReadExt;

    let agent = &crate::support::binaries().0;
    let mut child = tokio::process::Command::new(agent)
        .args(["sim-engine", "--listen", "127.0.0.1:0", "--model", "llama"])
        .args(["--adapter", "sql", "--adapter", "chat"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent sim-engine");
    let stdout = child.stdout.take().expect("stdout");
    let first = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read")
        .expect("a first line");
    let (said, url) = first.split_once(" on ").expect("… on <url>");
    assert_eq!(
        said,
        "simulated engine (SIMULATED timings) with 2 LoRA adapters"
    );
    let http = reqwest::Client::new();
    let models: serde_json::Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let served: Vec<(String, Option<String>)> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["parent"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        served,
        [
            ("llama".to_owned(), None),
            ("sql".to_owned(), Some("llama".to_owned())),
            ("chat".to_owned(), Some("llama".to_owned())),
        ]
    );
    for (model, status) in [("sql", 200), ("nope", 404)] {
        let answer = http
            .post(format!("{url}/v1/completions"))
            .json(&serde_json::json!({"model": model, "prompt": "a b", "max_tokens": 2}))
            .send()
            .await
            .expect("completion");
        assert_eq!(answer.status().as_u16(), status, "{model}");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;

    let twice = tokio::process::Command::new(agent)
        .args(["sim-engine", "--listen", "127.0.0.1:0", "--model", "llama"])
        .args(["--adapter", "llama"])
        .output()
        .await
        .expect("agent sim-engine");
    assert!(!twice.status.success());
    let said = String::from_utf8_lossy(&twice.stderr);
    assert!(said.contains("\"llama\" twice"), "{said}");
}
