use super::*;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs/traces")
        .join(name)
}

fn whole() -> TraceWindow {
    TraceWindow {
        start: Duration::ZERO,
        limit: None,
        column: None,
    }
}

fn load_text(text: &str, format: TraceFormat, window: &TraceWindow) -> Result<Trace, TraceError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.trace");
    std::fs::write(&path, text).expect("write");
    Trace::load(&path, format, window)
}

#[test]
fn the_sample_traces_parse_to_their_records() {
    let mooncake = Trace::load(
        &sample("mooncake-sample.jsonl"),
        TraceFormat::Mooncake,
        &whole(),
    )
    .expect("mooncake");
    assert_eq!(mooncake.records.len(), 40);
    assert_eq!(mooncake.skipped_rows + mooncake.zero_output, 0);
    // First line: timestamp 428 ms is the window's start.
    assert_eq!(
        mooncake.records[0],
        TraceRecord {
            at_ns: 0,
            prompt_tokens: 517,
            output_tokens: 30,
            hash_ids: vec![0, 1],
            key: None,
            line: 1
        }
    );
    let last = &mooncake.records[39];
    assert_eq!(
        (last.at_ns, last.prompt_tokens, last.hash_ids.as_slice()),
        ((10_298 - 428) * 1_000_000, 1138, &[6, 7, 59][..])
    );

    let azure =
        Trace::load(&sample("azure-sample.csv"), TraceFormat::Azure, &whole()).expect("azure");
    assert_eq!(azure.records.len(), 60);
    assert_eq!(
        (
            azure.records[0].prompt_tokens,
            azure.records[0].output_tokens
        ),
        (1173, 68)
    );
    // 18:15:46.6878160 to 18:16:14.8377170, to the 100 ns the format has.
    assert_eq!(azure.span(), Duration::from_nanos(28_149_901_000));
    assert_eq!(azure.records[59].line, 61, "the header is line 1");

    let window = TraceWindow {
        column: Some("Model".into()),
        ..whole()
    };
    let burst = Trace::load(
        &sample("burstgpt-sample.csv"),
        TraceFormat::BurstGpt,
        &window,
    )
    .expect("burstgpt");
    assert_eq!(
        burst.zero_output, 8,
        "failed requests are skipped and counted"
    );
    assert_eq!(burst.records.len(), 512 - 8);
    assert_eq!(burst.records[0].key.as_deref(), Some("ChatGPT"));
    assert_eq!(
        (
            burst.records[0].prompt_tokens,
            burst.records[0].output_tokens
        ),
        (108, 15)
    );
    assert_eq!(
        burst.span(),
        Duration::from_nanos(119_969_000_000 - 42_000_000)
    );

    let window = TraceWindow {
        column: Some("tenant".into()),
        ..whole()
    };
    let ours = Trace::load(&sample("sample.jsonl"), TraceFormat::Jsonl, &window).expect("jsonl");
    assert_eq!(ours.records.len(), 30);
    assert_eq!(ours.records[0].key.as_deref(), Some("code"));
    assert_eq!(ours.span(), Duration::from_nanos(2_611_400_000));
    assert!(ours.notes(&sample("sample.jsonl")).is_empty());
}

#[test]
fn bad_rows_are_skipped_with_their_line_and_counted() {
    let text = "{\"time_ms\": 0, \"prompt_tokens\": 10, \"output_tokens\": 5}\n\
                not json\n\
                [1, 2]\n\
                {\"time_ms\": 1, \"prompt_tokens\": -3, \"output_tokens\": 5}\n\
                \n\
                {\"time_ms\": 2, \"prompt_tokens\": 10}\n\
                {\"time_ms\": 3, \"prompt_tokens\": 0, \"output_tokens\": 5}\n\
                {\"time_ms\": 4, \"prompt_tokens\": 10, \"output_tokens\": 5, \"hash_ids\": [1, \"x\"]}\n\
                {\"time_ms\": 5, \"prompt_tokens\": 12, \"output_tokens\": 6}\n";
    let trace = load_text(text, TraceFormat::Jsonl, &whole()).expect("two usable rows");
    assert_eq!(trace.records.len(), 2);
    assert_eq!(trace.records[1].line, 9);
    assert_eq!(trace.skipped_rows, 6);
    let expected = [
        ":2: not JSON",
        ":3: not a JSON object",
        ":4: `prompt_tokens` must be a whole number",
        ":6: no `output_tokens`",
        ":7: a prompt of 0 tokens",
        ":8: `hash_ids` must be whole numbers",
    ];
    for (message, want) in trace.skipped.iter().zip(expected) {
        assert!(
            message.contains("t.trace") && message.contains(want),
            "{message} / {want}"
        );
    }
    let notes = trace.notes(Path::new("t.trace"));
    assert!(
        notes[0].starts_with("trace t.trace: 6 rows skipped"),
        "{notes:?}"
    );

    let csv = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
               0.5,ChatGPT,100,20,120,API log\n\
               soon,ChatGPT,100,20,120,API log\n\
               1.5,GPT-4,many,20,120,API log\n\
               2.5,GPT-4,100,0,100,API log\n\
               3.5,GPT-4,100,7.0,107,API log\n";
    let trace = load_text(csv, TraceFormat::BurstGpt, &whole()).expect("usable");
    assert_eq!(trace.records.len(), 2);
    assert_eq!((trace.skipped_rows, trace.zero_output), (2, 1));
    assert!(trace.skipped[0].contains(":3: Timestamp \"soon\" is not a time"));
    assert!(trace.skipped[1].contains(":4: Request tokens \"many\""));
    assert_eq!(trace.records[1].output_tokens, 7, "7.0 is a whole number");
}

#[test]
fn many_bad_rows_name_only_the_first_few() {
    let mut text = String::from("{\"time_ms\": 0, \"prompt_tokens\": 1, \"output_tokens\": 1}\n");
    for _ in 0..10_000 {
        text.push_str("garbage\n");
    }
    let trace = load_text(&text, TraceFormat::Jsonl, &whole()).expect("one usable row");
    assert_eq!(trace.skipped_rows, 10_000);
    assert_eq!(trace.skipped.len(), MAX_MESSAGES);
    assert!(trace.notes(Path::new("t"))[0].ends_with("; …"));
}

#[test]
fn an_unsorted_trace_is_sorted_and_says_where() {
    let text = "{\"timestamp\": 300, \"input_length\": 3, \"output_length\": 1}\n\
                {\"timestamp\": 100, \"input_length\": 1, \"output_length\": 1}\n\
                {\"timestamp\": 200, \"input_length\": 2, \"output_length\": 1}\n";
    let trace = load_text(text, TraceFormat::Mooncake, &whole()).expect("usable");
    let order: Vec<(u64, u32)> = trace
        .records
        .iter()
        .map(|r| (r.at_ns, r.prompt_tokens))
        .collect();
    assert_eq!(order, [(0, 1), (100_000_000, 2), (200_000_000, 3)]);
    assert_eq!(trace.unsorted_at, Some(2));
    let notes = trace.notes(Path::new("m.jsonl"));
    assert!(
        notes.iter().any(|n| n.contains("not in order (line 2")),
        "{notes:?}"
    );
}

#[test]
fn the_window_starts_later_and_holds_at_most_limit_records() {
    let text: String = (0..10)
        .map(|i| {
            format!(
                "{{\"time_ms\": {}, \"prompt_tokens\": 1, \"output_tokens\": 1}}\n",
                i * 1000
            )
        })
        .collect();
    let window = TraceWindow {
        start: Duration::from_millis(2500),
        limit: Some(3),
        column: None,
    };
    let trace = load_text(&text, TraceFormat::Jsonl, &window).expect("usable");
    let at: Vec<u64> = trace.records.iter().map(|r| r.at_ns).collect();
    // Records at 3, 4 and 5 s, from the window's start at 2.5 s.
    assert_eq!(at, [500_000_000, 1_500_000_000, 2_500_000_000]);
    assert_eq!(trace.outside_window, 7);
    let late = TraceWindow {
        start: Duration::from_secs(60),
        limit: None,
        column: None,
    };
    let err = load_text(&text, TraceFormat::Jsonl, &late).expect_err("nothing after 60 s");
    assert!(err.to_string().contains("before start 1m"), "{err}");
}

#[test]
fn azure_2024_times_carry_an_offset() {
    let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
               2024-05-10 00:00:00.009930+00:00,100,10\n\
               2024-05-10 00:00:01.509930+00:00,200,20\n";
    let trace = load_text(csv, TraceFormat::Azure, &whole()).expect("usable");
    assert_eq!(trace.records[1].at_ns, 1_500_000_000);
}

#[test]
fn a_csv_without_the_formats_columns_is_refused_by_name() {
    let csv = "time,prompt,output\n1,2,3\n";
    let err = load_text(csv, TraceFormat::Azure, &whole()).expect_err("not azure");
    let text = err.to_string();
    assert!(
        text.contains("no column \"TIMESTAMP\" (its columns: time, prompt, output)")
            && text.contains("azure trace"),
        "{text}"
    );
    let window = TraceWindow {
        column: Some("Modle".into()),
        ..whole()
    };
    let csv = "Timestamp,Model,Request tokens,Response tokens\n1,a,2,3\n";
    let err = load_text(csv, TraceFormat::BurstGpt, &window).expect_err("no such column");
    assert!(err.to_string().contains("no column \"Modle\""), "{err}");
}

#[test]
fn a_tenant_map_routes_by_value_or_by_a_stable_hash() {
    let window = TraceWindow {
        column: Some("Model".into()),
        ..whole()
    };
    let trace = Trace::load(
        &sample("burstgpt-sample.csv"),
        TraceFormat::BurstGpt,
        &window,
    )
    .expect("burstgpt");
    let by_value = TenantMap {
        column: "Model".into(),
        route: Route::Values(BTreeMap::from([("GPT-4".into(), "big".into())])),
    };
    let big = trace.records_of("big", Some(&by_value));
    assert!(!big.is_empty());
    assert!(big.iter().all(|r| r.key.as_deref() == Some("GPT-4")));
    assert_eq!(
        big.len(),
        trace
            .records
            .iter()
            .filter(|r| r.key.as_deref() == Some("GPT-4"))
            .count()
    );
    assert!(trace.records_of("small", Some(&by_value)).is_empty());
    assert_eq!(trace.records_of("any", None).len(), trace.records.len());

    let hashed = TenantMap {
        column: "c".into(),
        route: Route::Hash(vec!["a".into(), "b".into()]),
    };
    let picks: Vec<&str> = (0..200)
        .map(|i| hashed.tenant_of(&format!("conv-{i}")).expect("one of two"))
        .collect();
    let to_a = picks.iter().filter(|&&t| t == "a").count();
    assert!((70..=130).contains(&to_a), "{to_a} of 200 to a");
    // Fixed forever (worked out apart from this code): a trace routes the same way on every
    // machine and in every version.
    let first: String = (0..12)
        .filter_map(|i| hashed.tenant_of(&format!("conv-{i}")))
        .collect();
    assert_eq!(first, "baabbbabbbab");
    assert_eq!(hashed.tenants(), ["a", "b"]);
}

#[test]
fn hostile_rows_are_skipped_not_panicked_on() {
    let mut text = b"{\"time_ms\": 1e300, \"prompt_tokens\": 1, \"output_tokens\": 1}\n".to_vec();
    text.extend_from_slice(b"{\"time_ms\": 0, \"prompt_tokens\": 1, \"output_tokens\": \xff}\n");
    text.extend_from_slice(b"{\"time_ms\": 5, \"prompt_tokens\": 2, \"output_tokens\": 1}\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.jsonl");
    std::fs::write(&path, &text).expect("write");
    let trace = Trace::load(&path, TraceFormat::Jsonl, &whole()).expect("one usable row");
    assert_eq!(trace.records.len(), 1);
    assert!(
        trace.skipped[0].contains(":1: its time is out of range"),
        "{:?}",
        trace.skipped
    );
    assert!(
        trace.skipped[1].contains(":2: not UTF-8 text"),
        "{:?}",
        trace.skipped
    );
    // A CSV row without the map's column is skipped, and a bad row names its own line.
    let csv = "Timestamp,Model,Request tokens,Response tokens\n1,,2,3\n2,a,2,3\n\"3,a,2,3\n";
    let window = TraceWindow {
        column: Some("Model".into()),
        ..whole()
    };
    let trace = load_text(csv, TraceFormat::BurstGpt, &window).expect("one usable row");
    assert_eq!(trace.records.len(), 1);
    assert!(
        trace.skipped[0].contains(":2: no Model"),
        "{:?}",
        trace.skipped
    );
}
