//! Kept answers, end to end: a local run whose JSONL dataset carries expected outputs, with
//! `keep_responses: 2`, against simulated engines (which answer " tok1 tok2 … tokN"). Only the
//! dataset's first two entries keep their answers; each is scored (exact match, ROUGE-L) in
//! summary.json, and report.html shows the two tenants' answers side by side.

use multitenant::events::{read_stream, Event};

use crate::support::{read_summary, run_experiment};

#[test]
fn kept_answers_are_scored_and_shown_side_by_side() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Entry 1 expects exactly what the engine says for 4 tokens; entry 2 differs in one of 4
    // words (ROUGE-L 3/4 both ways: 0.75); entry 3 has no expected output and is not kept.
    std::fs::write(
        tmp.path().join("qa.jsonl"),
        "{\"prompt\": \"count to four\", \"output_tokens\": 4, \"expected\": \"tok1 tok2 tok3 tok4\"}\n\
         {\"prompt\": \"count with a twist\", \"output_tokens\": 4, \"expected\": \"tok1 tok2 answer tok4\"}\n\
         {\"prompt\": \"say three things\", \"output_tokens\": 3}\n",
    )
    .expect("dataset");
    let dir = run_experiment(
        tmp.path(),
        "answers",
        "name: answers\nworkloads:\n  w: {arrival: {kind: constant, rate: 10}, data: {kind: jsonl, path: qa.jsonl}, warmup: 0s, duration: 2s, keep_responses: 2}\nnodes:\n  - name: n\n    trials: [mps]\n    tenants:\n      - {name: x, engine: {kind: simulated}, workload: w}\n      - {name: y, engine: {kind: simulated}, workload: w}\n",
    );
    let summary = read_summary(&dir);

    for tenant in ["x", "y"] {
        let prompts = read_stream(&dir.join(format!("nodes/n/mps/{tenant}.prompts.jsonl")))
            .expect("prompts stream");
        let (mut first, mut second) = (0u64, 0u64);
        for line in &prompts.events {
            let Event::Prompt(p) = &line.event else {
                continue;
            };
            match (p.origin.rsplit(':').next(), p.response.as_deref()) {
                (Some("1"), Some(answer)) => {
                    assert_eq!(answer, " tok1 tok2 tok3 tok4");
                    assert_eq!(p.expected.as_deref(), Some("tok1 tok2 tok3 tok4"));
                    first += 1;
                }
                (Some("2"), Some(_)) => second += 1,
                (Some("3"), response) => assert_eq!(response, None, "entry 3 is not kept"),
                (_, None) => panic!("{} kept no answer: {p:?}", p.origin),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            first > 0 && second > 0,
            "{tenant}: {first} and {second} kept"
        );
        let t = summary.nodes[0].trials[0]
            .tenants
            .iter()
            .find(|t| t.tenant == tenant)
            .expect("tenant");
        let q = t.quality.as_ref().expect("scored");
        let kept = first + second;
        let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
        assert_eq!((q.kept, q.scored), (kept, kept));
        assert_eq!(q.exact_match, Some(round3(first as f64 / kept as f64)));
        assert_eq!(
            q.rouge_l,
            Some(round3((first as f64 + 0.75 * second as f64) / kept as f64))
        );
    }

    let html = std::fs::read_to_string(dir.join("report.html")).expect("report");
    assert!(html.contains("<h2>Answers side by side</h2>"));
    let row = html
        .split("<tr class=\"answer\">")
        .find(|r| r.contains("count with a twist"))
        .and_then(|r| r.split("</tr>").next())
        .expect("the second prompt's row");
    assert!(
        row.starts_with("<td>[qa.jsonl:2] count with a twist</td>"),
        "{row}"
    );
    // Expected output, then each tenant's answer with its verdict and score.
    assert!(row.contains("<td>tok1 tok2 answer tok4</td>"), "{row}");
    assert_eq!(row.matches("[differs; ROUGE-L 0.750]").count(), 2, "{row}");
}
