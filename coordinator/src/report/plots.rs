//! The report's plots, drawn by plotters as SVG documents: latency CDFs per tenant (one line
//! per trial, so solo and shared sit on one axis), a timeline per node (throughput and TTFT of
//! every tenant, then the GPU's utilization, memory, power and SM activity, with trial
//! boundaries), offered against achieved rate, and slowdown bars.
//!
//! A plot with nothing to show is not drawn; it becomes a [`PlotGap`] that says why, so an
//! empty axis never stands in for "no data".

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::anyhow;
use multitenant::analysis::{Summary, TenantSummary, TrialSummary};
use multitenant::events::GpuSample;
use multitenant::metrics::LatencyHistogram;
use multitenant::series::{ExperimentSeries, LogSketch, NodeSeries, TenantSeries, TimeBin};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

/// A drawn plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// File name under `plots/`.
    pub file: String,
    /// Title shown above it in the report.
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

/// A plot that was not drawn, and why.
#[derive(Debug, Clone)]
pub struct PlotGap {
    /// The plot's title.
    pub title: String,
    /// Why there is nothing to draw.
    pub reason: String,
}

/// Every plot of an experiment.
#[derive(Debug, Clone, Default)]
pub struct Plots {
    /// Drawn, in report order.
    pub drawn: Vec<Plot>,
    /// Not drawn, with reasons.
    pub gaps: Vec<PlotGap>,
}

impl Plots {
    fn add(&mut self, file: String, title: String, svg: String) {
        self.drawn.push(Plot { file, title, svg });
    }

    fn gap(&mut self, title: String, reason: impl Into<String>) {
        self.gaps.push(PlotGap {
            title,
            reason: reason.into(),
        });
    }
}

/// An x-y chart of `x` against `y` on `area`, with a caption when given and axes named.
fn xy_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: Option<&str>,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
) -> Result<XyChart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut builder = ChartBuilder::on(area);
    if let Some(caption) = caption {
        builder.caption(caption, (FONT, 16));
    }
    let mut chart = builder
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .draw()?;
    Ok(chart)
}

/// The legend mark of a line in `colour`.
fn line_mark(colour: RGBAColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(width))
}

/// Draws the legend of `chart`'s labelled series at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Colours told apart by most readers, one per tenant (tenth onward repeat).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &str = "sans-serif";
const WIDTH: u32 = 900;
/// Most points a line gets; longer series are thinned evenly (CDFs) or binned (timelines).
const MAX_LINE_POINTS: usize = 400;
/// Timeline bins per node run, at least one second each.
const TIMELINE_BINS: u64 = 200;

type DrawResult = Result<(), Box<dyn std::error::Error>>;
type XyChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws every plot of `summary` and `series`.
pub fn draw_all(summary: &Summary, series: &ExperimentSeries) -> anyhow::Result<Plots> {
    let mut plots = Plots::default();
    for node in &series.nodes {
        let colours = TenantColours::of(node);
        for (metric, pick) in [
            (
                "TTFT",
                (|t| &t.ttft) as fn(&TenantSeries) -> &LatencyHistogram,
            ),
            ("TPOT", |t| &t.tpot),
        ] {
            for tenant in colours.names() {
                latency_cdf(&mut plots, node, tenant, metric, pick)?;
            }
        }
        timeline(&mut plots, node, &colours)?;
        offered_vs_achieved(&mut plots, summary, &node.node, &colours)?;
        slowdown_bars(&mut plots, summary, &node.node)?;
        capacity_region(&mut plots, summary, &node.node)?;
    }
    Ok(plots)
}

/// A stable colour per tenant name within a node.
struct TenantColours(BTreeMap<String, RGBColor>);

impl TenantColours {
    fn of(node: &NodeSeries) -> Self {
        let mut names: Vec<&str> = node
            .trials
            .iter()
            .flat_map(|t| t.tenants.iter().map(|x| x.tenant.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        Self(
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_owned(), PALETTE[i % PALETTE.len()]))
                .collect(),
        )
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    fn of_tenant(&self, tenant: &str) -> RGBColor {
        self.0.get(tenant).copied().unwrap_or(PALETTE[7])
    }
}

/// Renders one SVG of `height` pixels with `draw`.
fn svg(
    file: &str,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        let drawn: DrawResult = (|| {
            root.fill(&WHITE)?;
            draw(&root)?;
            root.present()?;
            Ok(())
        })();
        drawn.map_err(|e| anyhow!("drawing {file}: {e}"))?;
    }
    Ok(out)
}

/// File names keep to letters, digits, `-` and `.`.
fn file_name(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let clean: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{clean}.svg")
}

/// The empirical CDF of `histogram` as a step line, in ms: at each kept bucket it rises from
/// the share below it to the share at or below it. Histograms of many buckets keep every k-th
/// (at most [`MAX_LINE_POINTS`] steps) and always the last.
fn cdf_points(histogram: &LatencyHistogram) -> Steps {
    let steps = histogram.cdf_us();
    let n = histogram.count() as f64;
    let step = steps.len().div_ceil(MAX_LINE_POINTS).max(1);
    let mut kept: Vec<usize> = (0..steps.len()).step_by(step).collect();
    if !steps.is_empty() && kept.last() != Some(&(steps.len() - 1)) {
        kept.push(steps.len() - 1);
    }
    let mut points = Vec::with_capacity(kept.len() * 2);
    let mut below = 0.0;
    for i in kept {
        let (us, count) = steps[i];
        let at_or_below = count as f64 / n;
        points.push((us as f64 / 1e3, below));
        points.push((us as f64 / 1e3, at_or_below));
        below = at_or_below;
    }
    points
}

/// Points of a line, (x, y).
type Steps = Vec<(f64, f64)>;

fn latency_cdf(
    plots: &mut Plots,
    node: &NodeSeries,
    tenant: &str,
    metric: &str,
    pick: fn(&TenantSeries) -> &LatencyHistogram,
) -> anyhow::Result<()> {
    let title = format!("{metric} CDF of {tenant} on {}, per trial", node.node);
    // Per trial: its name, its count and its CDF's steps.
    let lines: Vec<(String, u64, Steps)> = node
        .trials
        .iter()
        .filter_map(|trial| {
            let t = trial.tenants.iter().find(|t| t.tenant == tenant)?;
            let histogram = pick(t);
            (histogram.count() > 0).then(|| {
                (
                    trial.trial.clone(),
                    histogram.count(),
                    cdf_points(histogram),
                )
            })
        })
        .collect();
    if lines.is_empty() {
        plots.gap(
            title,
            format!("no measured request of {tenant} has a {metric}"),
        );
        return Ok(());
    }
    let x_max = lines
        .iter()
        .filter_map(|(_, _, points)| points.last().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.05;
    let file = file_name(&[&node.node, tenant, &metric.to_lowercase(), "cdf"]);
    let svg = svg(&file, 360, |root| {
        let x_desc = format!("{metric} (ms)");
        let mut chart = xy_chart(
            root,
            Some(&title),
            (0.0..x_max, 0.0..1.0),
            (&x_desc, "share of requests"),
        )?;
        for (i, (trial, count, points)) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(format!("{trial} (n={count})"))
                .legend(line_mark(colour.to_rgba(), 2));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })?;
    plots.add(file, title, svg);
    Ok(())
}

/// The node's time axis: its origin and end in ns, and its bins, `bin_s` seconds wide: a power
/// of two, so every tenant's timeline re-bins onto it exactly, its bins starting at whole
/// multiples of their width on the node's clock.
struct TimeAxis {
    origin: u64,
    end: u64,
    bin_s: u64,
}

impl TimeAxis {
    fn of(node: &NodeSeries) -> Option<Self> {
        let tenants = node.trials.iter().flat_map(|t| &t.tenants);
        let windows = tenants.clone().filter_map(|t| t.window_ns);
        let starts = node.trials.iter().filter_map(|t| t.started_ns);
        let ends = node.trials.iter().filter_map(|t| t.ended_ns);
        let origin = starts
            .chain(windows.clone().map(|w| w.0))
            .chain(node.gpu.iter().map(|s| s.at_ns))
            .min()?;
        let end = ends
            .chain(windows.map(|w| w.1))
            .chain(node.gpu.iter().map(|s| s.at_ns))
            .max()?;
        let span_s = end.saturating_sub(origin) / 1_000_000_000;
        let widest = tenants.map(|t| t.timeline.width_s()).max().unwrap_or(1);
        let bin_s = (span_s / TIMELINE_BINS)
            .max(widest)
            .max(1)
            .next_power_of_two();
        Some(Self { origin, end, bin_s })
    }

    fn seconds(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.origin) as f64 / 1e9
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.seconds(self.end).max(1.0)
    }

    /// The middle of the bin that starts at `start_ns`, in seconds on the axis.
    fn bin_mid_s(&self, start_ns: u64) -> f64 {
        (start_ns as f64 - self.origin as f64) / 1e9 + self.bin_s as f64 / 2.0
    }
}

/// One line of a timeline panel.
struct Line {
    label: Option<String>,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One panel of a timeline: a y-axis name and its lines.
struct Panel {
    y_desc: String,
    lines: Vec<Line>,
}

fn timeline(plots: &mut Plots, node: &NodeSeries, colours: &TenantColours) -> anyhow::Result<()> {
    let title = format!("Timeline of {}: requests and GPU, trials marked", node.node);
    let Some(axis) = TimeAxis::of(node) else {
        plots.gap(title, "no request, trial event or GPU sample has a time");
        return Ok(());
    };
    let mut panels = request_panels(node, &axis, colours);
    let gpu = gpu_panels(&node.gpu, &axis);
    if gpu.is_empty() {
        plots.gap(
            format!("GPU timeline of {}", node.node),
            "no GPU sample was recorded (NVML unavailable: GPU sampling was off)",
        );
    }
    panels.extend(gpu);
    let boundaries: Vec<(f64, &str)> = node
        .trials
        .iter()
        .filter_map(|t| Some((axis.seconds(t.started_ns?), t.trial.as_str())))
        .collect();
    let file = file_name(&[&node.node, "timeline"]);
    let height = 60 + 210 * panels.len() as u32;
    let svg = svg(&file, height, |root| {
        let root = root.titled(&title, (FONT, 16))?;
        let areas = root.split_evenly((panels.len(), 1));
        for (panel, area) in panels.iter().zip(&areas) {
            let y_max = panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1))
                .fold(0.0, f64::max)
                .max(1e-3)
                * 1.1;
            let mut chart = xy_chart(
                area,
                None,
                (axis.range(), 0.0..y_max),
                ("seconds since the node's first trial", &panel.y_desc),
            )?;
            for &(x, trial) in &boundaries {
                let style = BLACK.mix(0.4).stroke_width(1);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, y_max)],
                    style,
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    trial.to_owned(),
                    (x, y_max),
                    (FONT, 11).into_font().color(&BLACK.mix(0.6)),
                )))?;
            }
            for line in &panel.lines {
                let drawn = chart.draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    line.colour.stroke_width(2),
                ))?;
                if let Some(label) = &line.label {
                    let colour = line.colour;
                    drawn
                        .label(label.as_str())
                        .legend(line_mark(colour.to_rgba(), 2));
                }
            }
            if panel.lines.iter().any(|l| l.label.is_some()) {
                draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
            }
        }
        Ok(())
    })?;
    plots.add(file, title, svg);
    Ok(())
}

/// Output tokens per second and TTFT p50 per bin, a line per tenant and trial (labelled once
/// per tenant, so a tenant keeps its colour across trials).
fn request_panels(node: &NodeSeries, axis: &TimeAxis, colours: &TenantColours) -> Vec<Panel> {
    let mut throughput = Panel {
        y_desc: "output tokens/s".into(),
        lines: Vec::new(),
    };
    let mut ttft = Panel {
        y_desc: "TTFT p50 (ms)".into(),
        lines: Vec::new(),
    };
    let mut labelled: Vec<&str> = Vec::new();
    for trial in &node.trials {
        for tenant in &trial.tenants {
            let bins: BTreeMap<u64, TimeBin> = tenant.timeline.rebinned(axis.bin_s);
            let tokens: Vec<(u64, u64)> = bins
                .iter()
                .filter(|(_, b)| b.output_tokens > 0)
                .map(|(&start, b)| (start, b.output_tokens))
                .collect();
            let ttfts: Vec<(u64, &LogSketch)> = bins
                .iter()
                .filter(|(_, b)| b.ttft.count() > 0)
                .map(|(&start, b)| (start, &b.ttft))
                .collect();
            if tokens.is_empty() && ttfts.is_empty() {
                continue;
            }
            let label = (!labelled.contains(&tenant.tenant.as_str())).then(|| {
                labelled.push(&tenant.tenant);
                tenant.tenant.clone()
            });
            let colour = colours.of_tenant(&tenant.tenant);
            let bin_s = axis.bin_s as f64;
            throughput.lines.push(Line {
                label: label.clone(),
                colour,
                points: tokens
                    .into_iter()
                    .map(|(start, n)| (axis.bin_mid_s(start), n as f64 / bin_s))
                    .collect(),
            });
            ttft.lines.push(Line {
                label,
                colour,
                points: ttfts
                    .into_iter()
                    .filter_map(|(start, sketch)| {
                        Some((axis.bin_mid_s(start), sketch.median_us()? / 1e3))
                    })
                    .collect(),
            });
        }
    }
    [throughput, ttft]
        .into_iter()
        .filter(|p| !p.lines.is_empty())
        .collect()
}

/// One panel per GPU figure that at least one sample has, a line per GPU.
fn gpu_panels(samples: &[GpuSample], axis: &TimeAxis) -> Vec<Panel> {
    type Figure = fn(&GpuSample) -> Option<f64>;
    let figures: [(&str, Figure); 4] = [
        ("GPU utilization %", |s| {
            s.utilization_gpu_pct.map(f64::from)
        }),
        ("memory used (GiB)", |s| {
            s.memory_used_bytes.map(|b| b as f64 / (1u64 << 30) as f64)
        }),
        ("power (W)", |s| s.power_mw.map(|mw| f64::from(mw) / 1000.0)),
        ("SM activity % (GPM)", |s| s.gpm_sm_util_pct),
    ];
    let mut gpus: Vec<u32> = samples.iter().map(|s| s.gpu).collect();
    gpus.sort_unstable();
    gpus.dedup();
    figures
        .into_iter()
        .filter_map(|(y_desc, figure)| {
            let lines: Vec<Line> = gpus
                .iter()
                .enumerate()
                .map(|(i, &gpu)| Line {
                    label: (gpus.len() > 1).then(|| format!("GPU {gpu}")),
                    colour: PALETTE[i % PALETTE.len()],
                    points: samples
                        .iter()
                        .filter(|s| s.gpu == gpu)
                        .filter_map(|s| Some((axis.seconds(s.at_ns), figure(s)?)))
                        .collect(),
                })
                .filter(|l| !l.points.is_empty())
                .collect();
            (!lines.is_empty()).then(|| Panel {
                y_desc: y_desc.into(),
                lines,
            })
        })
        .collect()
}

/// Every tenant of every trial that `node` ran, with its trial.
fn tenants_of<'a>(
    summary: &'a Summary,
    node: &'a str,
) -> impl Iterator<Item = (&'a TrialSummary, &'a TenantSummary)> {
    summary
        .trials()
        .filter(move |(n, _)| *n == node)
        .flat_map(|(_, t)| t.tenants.iter().map(move |x| (t, x)))
}

fn offered_vs_achieved(
    plots: &mut Plots,
    summary: &Summary,
    node: &str,
    colours: &TenantColours,
) -> anyhow::Result<()> {
    let title = format!("Offered against achieved request rate on {node}");
    let points: Vec<(String, String, f64, f64)> = tenants_of(summary, node)
        .filter_map(|(t, x)| {
            Some((
                t.trial.clone(),
                x.tenant.clone(),
                x.offered_rate?,
                x.metrics.achieved_rate?,
            ))
        })
        .collect();
    if points.is_empty() {
        plots.gap(
            title,
            "no tenant had an open-loop arrival with an achieved rate (closed-loop \
                     tenants have no offered rate)",
        );
        return Ok(());
    }
    let max = points
        .iter()
        .map(|p| p.2.max(p.3))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let file = file_name(&[node, "offered-vs-achieved"]);
    let svg = svg(&file, 420, |root| {
        let mut chart = xy_chart(
            root,
            Some(&title),
            (0.0..max, 0.0..max),
            ("offered (requests/s)", "achieved (requests/s)"),
        )?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (max, max)], BLACK.mix(0.3)))?
            .label("achieved = offered")
            .legend(line_mark(BLACK.mix(0.3), 1));
        let mut labelled: Vec<&str> = Vec::new();
        for (trial, tenant, offered, achieved) in &points {
            let colour = colours.of_tenant(tenant);
            chart.draw_series(std::iter::once(Text::new(
                trial.clone(),
                (*offered, *achieved),
                (FONT, 11).into_font().color(&BLACK.mix(0.6)),
            )))?;
            let drawn = chart.draw_series(std::iter::once(Circle::new(
                (*offered, *achieved),
                5,
                colour.filled(),
            )))?;
            if !labelled.contains(&tenant.as_str()) {
                labelled.push(tenant);
                drawn
                    .label(tenant.as_str())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
            }
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })?;
    plots.add(file, title, svg);
    Ok(())
}

/// The slowdown ratios shown as bars, with their names.
const SLOWDOWN_BARS: [&str; 4] = ["TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99"];

fn slowdown_bars(plots: &mut Plots, summary: &Summary, node: &str) -> anyhow::Result<()> {
    let title = format!("Slowdown against solo on {node} (shared / solo; 1 = no slowdown)");
    let groups: Vec<(String, [Option<f64>; 4])> = tenants_of(summary, node)
        .filter_map(|(t, x)| {
            let s = x.slowdown?;
            let bars = [s.ttft_p50, s.ttft_p99, s.tpot_p50, s.tpot_p99];
            bars.iter()
                .any(Option::is_some)
                .then(|| (format!("{}/{}", t.trial, x.tenant), bars))
        })
        .collect();
    if groups.is_empty() {
        plots.gap(
            title,
            "no shared trial has a tenant whose solo trial also ran",
        );
        return Ok(());
    }
    let y_max = groups
        .iter()
        .flat_map(|(_, b)| b.iter().flatten().copied())
        .fold(1.0, f64::max)
        * 1.15;
    let file = file_name(&[node, "slowdown"]);
    let svg = svg(&file, 400, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..groups.len() as f64, 0.0..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("shared / solo")
            .light_line_style(WHITE)
            .draw()?;
        let width = 0.8 / SLOWDOWN_BARS.len() as f64;
        for (bar, name) in SLOWDOWN_BARS.iter().enumerate() {
            let colour = PALETTE[bar];
            let rects = groups.iter().enumerate().filter_map(|(g, (_, values))| {
                let value = values[bar]?;
                let x0 = g as f64 + 0.1 + bar as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, value)],
                    colour.filled(),
                ))
            });
            chart
                .draw_series(rects)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart.draw_series(LineSeries::new(
            [(0.0, 1.0), (groups.len() as f64, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        for (g, (name, _)) in groups.iter().enumerate() {
            chart.draw_series(std::iter::once(Text::new(
                name.clone(),
                (g as f64 + 0.1, y_max * 0.97),
                (FONT, 12).into_font(),
            )))?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })?;
    plots.add(file, title, svg);
    Ok(())
}

/// The SLO-feasible frontier of a two-tenant node: each shared search's highest passing rates
/// as fractions of the tenants' solo capacities, joined per mode from one axis to the other,
/// against the straight line between the solo capacities (a static partition of the GPU).
fn capacity_region(plots: &mut Plots, summary: &Summary, node: &str) -> anyhow::Result<()> {
    let Some(capacity) = summary
        .capacity
        .as_ref()
        .and_then(|c| c.nodes.iter().find(|n| n.node == node))
    else {
        return Ok(());
    };
    let title = format!("Capacity region on {node} (fractions of solo capacity)");
    let Some(first) = capacity.shared.first() else {
        return Ok(());
    };
    if first.tenants.len() != 2 {
        plots.gap(
            title,
            "the capacity region is drawn for nodes of two tenants",
        );
        return Ok(());
    }
    let (x_name, y_name) = (
        first.tenants[0].tenant.clone(),
        first.tenants[1].tenant.clone(),
    );
    let mut modes: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in &capacity.shared {
        if let [Some(x), Some(y)] = [s.tenants[0].of_solo, s.tenants[1].of_solo] {
            modes.entry(s.mode.name()).or_default().push((x, y));
        }
    }
    if modes.is_empty() {
        plots.gap(
            title,
            "no shared search found a passing rate with both solo capacities known",
        );
        return Ok(());
    }
    let top = modes
        .values()
        .flatten()
        .map(|(x, y)| x.max(*y))
        .fold(1.0, f64::max)
        * 1.1;
    let file = file_name(&[node, "capacity-region"]);
    let svg = svg(&file, 480, |root| {
        let mut chart = xy_chart(
            root,
            Some(&title),
            (0.0..top, 0.0..top),
            (
                &format!("{x_name} / its solo capacity"),
                &format!("{y_name} / its solo capacity"),
            ),
        )?;
        chart
            .draw_series(LineSeries::new([(1.0, 0.0), (0.0, 1.0)], BLACK.mix(0.4)))?
            .label("static partition (1 GPU-equivalent)")
            .legend(line_mark(BLACK.mix(0.4), 1));
        for (i, (mode, points)) in modes.iter_mut().enumerate() {
            points.sort_by(|a, b| b.0.total_cmp(&a.0));
            let colour = PALETTE[(i + 3) % PALETTE.len()];
            let line: Vec<(f64, f64)> = std::iter::once((1.0, 0.0))
                .chain(points.iter().copied())
                .chain(std::iter::once((0.0, 1.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)))?
                .label(*mode)
                .legend(line_mark(colour.into(), 2));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, colour.filled())))?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })?;
    plots.add(file, title, svg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_step_thin_long_series_and_end_at_one() {
        let mut many = LatencyHistogram::new();
        for us in 1..=1000 {
            many.record_us(us);
        }
        let points = cdf_points(&many);
        assert!(
            points.len() <= 2 * (MAX_LINE_POINTS + 1),
            "{} points",
            points.len()
        );
        assert_eq!(points[..2], [(0.001, 0.0), (0.001, 0.001)]);
        assert_eq!(points.last(), Some(&(1.0, 1.0)));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        // {2, 2, 3, 3} ms: half the requests at 2 ms or less, all at 3 ms or less.
        let mut four = LatencyHistogram::new();
        for us in [2_000, 2_000, 3_000, 3_000] {
            four.record_us(us);
        }
        assert_eq!(
            cdf_points(&four),
            [(2.0, 0.0), (2.0, 0.5), (3.0, 0.5), (3.0, 1.0)]
        );
    }

    #[test]
    fn file_names_keep_to_safe_characters() {
        assert_eq!(
            file_name(&["node a", "t/1", "ttft", "cdf"]),
            "node-a-t-1-ttft-cdf.svg"
        );
    }
}
