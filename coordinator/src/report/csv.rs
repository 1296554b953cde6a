//! `summary.csv`: one row per tenant and trial, for spreadsheets and pandas. Empty cells mean
//! "no data", never zero. Latencies in ms, rates per second.

use multitenant::analysis::Summary;
use multitenant::metrics::Percentiles;

const HEADER: &[&str] = &[
    "node",
    "trial",
    "mode",
    "state",
    "tenant",
    "model",
    "engine",
    "served_by",
    "api",
    "simulated",
    "sent",
    "completed",
    "failed",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "schedule_lag_p99_ms",
    "output_tokens_per_s",
    "input_tokens_per_s",
    "offered_rate",
    "achieved_rate",
    "slowdown_ttft_p50",
    "slowdown_tpot_p50",
    "slowdown_e2e_p99",
    "aggregate_output_tokens_per_s",
    "energy_per_output_token_j",
    "slo",
    "goodput_rps",
    "slo_attainment",
    "answers_scored",
    "exact_match",
    "rouge_l",
];

/// How CSV shows a figure that has no data: an empty field, never a 0.
const NO_DATA: &str = "";

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| NO_DATA.to_owned(), |v| format!("{v}"))
}

/// Quotes a field when CSV needs it.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// `pass`, `fail`, or empty without an SLO.
fn slo_verdict(slo: Option<&multitenant::slo::SloResult>) -> &'static str {
    match slo {
        Some(s) if s.pass => "pass",
        Some(_) => "fail",
        None => NO_DATA,
    }
}

/// The CSV text of `summary`.
pub fn render_csv(summary: &Summary) -> String {
    let mut out = HEADER.join(",") + "\n";
    let p = |p: Option<Percentiles>, pick: fn(&Percentiles) -> f64| number(p.as_ref().map(pick));
    for (node, trial) in summary.trials() {
        let mode = trial.mode.name().to_owned();
        for t in &trial.tenants {
            let m = &t.metrics;
            let row = [
                field(node),
                field(&trial.trial),
                mode.clone(),
                field(trial.state.name()),
                field(&t.tenant),
                field(&t.model),
                field(&t.engine),
                field(t.served_by.as_deref().unwrap_or(NO_DATA)),
                t.api.name().to_owned(),
                t.simulated.to_string(),
                m.sent.to_string(),
                m.completed.to_string(),
                m.failed.to_string(),
                p(m.ttft_ms, |p| p.p50),
                p(m.ttft_ms, |p| p.p99),
                p(m.tpot_ms, |p| p.p50),
                p(m.tpot_ms, |p| p.p99),
                p(m.itl_ms, |p| p.p50),
                p(m.itl_ms, |p| p.p99),
                p(m.e2e_ms, |p| p.p50),
                p(m.e2e_ms, |p| p.p99),
                p(m.schedule_lag_ms, |p| p.p99),
                number(m.throughput.map(|t| t.output_tokens_per_s)),
                number(m.throughput.map(|t| t.input_tokens_per_s)),
                number(t.offered_rate),
                number(m.achieved_rate),
                number(t.slowdown.and_then(|s| s.ttft_p50)),
                number(t.slowdown.and_then(|s| s.tpot_p50)),
                number(t.slowdown.and_then(|s| s.e2e_p99)),
                number(trial.aggregate_output_tokens_per_s),
                number(trial.energy_per_output_token_j),
                slo_verdict(t.slo.as_ref()).to_owned(),
                number(t.slo.as_ref().and_then(|s| s.goodput_rps)),
                number(t.slo.as_ref().and_then(|s| s.attainment)),
                t.quality
                    .as_ref()
                    .map(|q| q.scored.to_string())
                    .unwrap_or_default(),
                number(t.quality.as_ref().and_then(|q| q.exact_match)),
                number(t.quality.as_ref().and_then(|q| q.rouge_l)),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
        // A tenant whose stream is missing: named, with its state saying so, and every
        // figure empty.
        for missing in &trial.missing {
            let mut row = vec![
                field(node),
                field(&trial.trial),
                mode.clone(),
                "stream missing".to_owned(),
                field(&missing.tenant),
            ];
            row.resize(HEADER.len(), String::new());
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

/// A decision as CSV and JSON name it.
fn decision_name(decision: multitenant::capacity::SharingDecision) -> &'static str {
    match decision {
        multitenant::capacity::SharingDecision::Wins => "wins",
        multitenant::capacity::SharingDecision::Loses => "loses",
        multitenant::capacity::SharingDecision::Undecided => "undecided",
    }
}

/// `capacity.csv`: one row per capacity search and tenant (solo searches have one tenant;
/// shared ones a row per tenant at the search's highest passing total), with the search's
/// interval, probe count, the engine time its probes took (a shared search's on each of its
/// tenants' rows: sum it per search, not per row), for shared searches GPU-equivalents, the
/// search's binding bound and where its fit crosses the limit, and, when the config priced a
/// GPU-hour, the price of 1M output tokens at capacity (a shared mode's on each of its rows).
/// `None` without a search.
pub fn render_capacity_csv(summary: &Summary) -> Option<String> {
    let capacity = summary.capacity.as_ref()?;
    let mut out = String::from(
        "node,search,mode,tenant,share,passed_rps,failed_rps,end,probes,not_significant,of_solo,gpu_equivalents,gpus_saved,gpu_equivalents_low,gpu_equivalents_high,decision,engine_s,binding,binding_crosses_rps,per_1m_output_tokens,currency\n",
    );
    for node in &capacity.nodes {
        for s in &node.solo {
            let i = &s.interval;
            let row = [
                field(&node.node),
                field(&s.search),
                "solo".into(),
                field(&s.tenant),
                "1".into(),
                number(i.passed),
                number(i.failed),
                i.end.name().into(),
                i.probes.to_string(),
                i.not_significant.to_string(),
                NO_DATA.into(),
                NO_DATA.into(),
                NO_DATA.into(),
                NO_DATA.into(),
                NO_DATA.into(),
                NO_DATA.into(),
                number(Some(s.engine_seconds)),
            ];
            let price = node
                .cost
                .as_ref()
                .and_then(|c| c.solo.iter().find(|x| x.tenant == s.tenant))
                .map(|x| x.per_million_output_tokens);
            let row = [&row[..], &fit_and_price(s.fit.as_ref(), price, node)].concat();
            out.push_str(&row.join(","));
            out.push('\n');
        }
        for s in &node.shared {
            let i = &s.interval;
            for t in &s.tenants {
                let row = [
                    field(&node.node),
                    field(&s.search),
                    s.mode.name().into(),
                    field(&t.tenant),
                    number(s.shares.get(&t.tenant).copied()),
                    number(t.passed_rps),
                    number(t.failed_rps),
                    i.end.name().into(),
                    i.probes.to_string(),
                    i.not_significant.to_string(),
                    number(t.of_solo),
                    number(s.gpu_equivalents),
                    number(s.gpus_saved),
                    number(s.gpu_equivalents_range.map(|r| r.low)),
                    number(s.gpu_equivalents_range.and_then(|r| r.high)),
                    s.decision.map_or(NO_DATA, decision_name).into(),
                    number(Some(s.engine_seconds)),
                ];
                let price = node
                    .cost
                    .as_ref()
                    .and_then(|c| {
                        c.shared
                            .iter()
                            .find(|x| x.mode == s.mode && s.mix_direction)
                    })
                    .map(|x| x.per_million_output_tokens);
                let row = [&row[..], &fit_and_price(s.fit.as_ref(), price, node)].concat();
                out.push_str(&row.join(","));
                out.push('\n');
            }
        }
    }
    Some(out)
}

/// A search's binding bound, where its fit crosses the limit, and its price with the currency.
fn fit_and_price(
    fit: Option<&multitenant::capacity::fit::SearchFit>,
    price: Option<f64>,
    node: &multitenant::capacity::NodeCapacity,
) -> [String; 4] {
    [
        fit.and_then(|f| f.binding.as_deref())
            .map_or_else(|| NO_DATA.into(), field),
        number(fit.and_then(|f| f.crosses_at)),
        number(price),
        price
            .and(node.cost.as_ref())
            .map_or_else(|| NO_DATA.into(), |c| field(&c.currency)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(number(None), "", "no data is an empty cell, not 0");
    }
}
