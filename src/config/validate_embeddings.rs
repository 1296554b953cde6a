//! Validation of what an embeddings workload (`api: embeddings`) cannot ask for.

use super::raw::RawWorkload;
use super::validate::{join, Checker};

impl Checker {
    /// What an embeddings workload cannot ask for: a streamed answer, conversations, kept
    /// answers, and bounds on tokens it does not stream.
    pub(super) fn embeddings_only(&mut self, raw: &RawWorkload, path: &str) {
        if raw.stream == Some(true) {
            self.problem(
                &join(path, "stream"),
                "an embeddings request is answered whole: leave `stream` out or set it false",
            );
        }
        if raw.data.as_ref().and_then(|d| d.kind.as_deref()) == Some("conversation") {
            self.problem(
                &join(path, "data.kind"),
                "conversations need a chat or completions API, not embeddings",
            );
        }
        if raw.data.as_ref().is_some_and(|d| d.output_tokens.is_some()) {
            self.problem(
                &join(path, "data.output_tokens"),
                "an embeddings request generates no output: leave output_tokens out",
            );
        }
        if raw.keep_responses.is_some_and(|n| n > 0) {
            self.problem(
                &join(path, "keep_responses"),
                "an embeddings answer is a vector, not text to keep: leave it out",
            );
        }
        if let Some(slo) = &raw.slo {
            for (bound, set) in [
                ("ttft_ms", slo.ttft_ms.is_some()),
                ("tpot_ms", slo.tpot_ms.is_some()),
                ("itl_ms", slo.itl_ms.is_some()),
            ] {
                if set {
                    self.problem(
                        &format!("{path}.slo.{bound}"),
                        "an embeddings request streams no tokens: bound its latency with e2e_ms",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Api, Experiment};

    fn with(workload: &str) -> String {
        format!(
            "name: e\nslo: {{ttft_ms: {{p99: 500}}, e2e_ms: {{p99: 900}}}}\nworkloads:\n  w: {{api: embeddings, arrival: {{kind: poisson, rate: 2}}, duration: 5s, {workload}}}\nnodes:\n  - name: n\n    tenants:\n      - {{name: a, engine: {{kind: simulated}}, workload: w}}\n"
        )
    }

    #[test]
    fn an_embeddings_workload_is_answered_whole_and_judged_on_latency_alone() {
        let e =
            Experiment::from_yaml(&with("data: {prompt_tokens: 300}"), "e.yaml").expect("valid");
        let w = &e.workloads["w"];
        assert_eq!(w.api, Api::Embeddings);
        assert!(!w.stream, "an embedding is answered whole by default");
        // The experiment's bound on TTFT cannot apply; its bound on latency does.
        assert!(w.slo.ttft_ms.is_empty(), "{:?}", w.slo);
        assert_eq!(w.slo.e2e_ms.values().copied().collect::<Vec<_>>(), [900.0]);
    }

    #[test]
    fn a_replay_drives_embeddings_without_output_lengths() {
        // `data:` beside a trace takes only a tokenizer: nothing may be added to it.
        let replay = "name: e\nworkloads:\n  w: {api: embeddings, arrival: {kind: trace, path: configs/traces/burstgpt-sample.csv, format: burstgpt, time_scale: 10}, data: {}}\nnodes:\n  - name: n\n    tenants:\n      - {name: a, engine: {kind: simulated}, workload: w}\n";
        let e = Experiment::from_yaml(replay, "e.yaml").expect("a replay of embeddings");
        assert_eq!(e.workloads["w"].api, Api::Embeddings);
    }

    #[test]
    fn what_an_embedding_cannot_be_asked_is_refused_by_name() {
        for (workload, path, says) in [
            (
                "stream: true, data: {prompt_tokens: 3}",
                "workloads.w.stream",
                "answered whole",
            ),
            (
                "data: {prompt_tokens: 3, output_tokens: 8}",
                "workloads.w.data.output_tokens",
                "generates no output",
            ),
            (
                "data: {kind: conversation, turns: 2, prompt_tokens: 3, output_tokens: 3}",
                "workloads.w.data.kind",
                "conversations need a chat or completions API",
            ),
            (
                "keep_responses: 3, data: {prompt_tokens: 3}",
                "workloads.w.keep_responses",
                "not text to keep",
            ),
            (
                "slo: {tpot_ms: {p99: 20}}, data: {prompt_tokens: 3}",
                "workloads.w.slo.tpot_ms",
                "bound its latency with e2e_ms",
            ),
            (
                "request_fields: {input: x}, data: {prompt_tokens: 3}",
                "workloads.w.request_fields.input",
                "set by the load generator",
            ),
        ] {
            let err = Experiment::from_yaml(&with(workload), "e.yaml")
                .expect_err(workload)
                .to_string();
            assert!(
                err.contains(path) && err.contains(says),
                "{workload}: {err}"
            );
        }
    }
}
