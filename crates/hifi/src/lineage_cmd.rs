//! `hifi lineage FILE`: field-level lineage of a pipeline file, without starting it —
//! every edge, or what one field comes from (`--upstream NODE.FIELD`) or reaches
//! (`--impact NODE.FIELD`), or the PII each sink receives (`--pii`); `--json` for tools.

use std::path::PathBuf;
use std::process::ExitCode;

use hifi_pipeline::lineage::{Graph, Reached};
use hifi_pipeline::pii::Policy;

/// Arguments of `hifi lineage`.
#[derive(Debug, clap::Args)]
pub struct LineageArgs {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// What this field (NODE.FIELD, e.g. partner.vat) comes from, through every stage.
    #[arg(long, value_name = "NODE.FIELD", conflicts_with = "impact")]
    upstream: Option<String>,
    /// Every field this one (NODE.FIELD, e.g. api.email) reaches, through every stage.
    #[arg(long, value_name = "NODE.FIELD", conflicts_with = "pii")]
    impact: Option<String>,
    /// The PII fields each sink receives, from where, and whether it allows them (exit
    /// status 1 when a sink receives PII it does not allow).
    #[arg(long, conflicts_with = "upstream")]
    pii: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `hifi lineage`.
pub fn run(args: LineageArgs) -> anyhow::Result<ExitCode> {
    // Without the PII check: showing where PII goes is the point of `--pii`.
    let (_, topology) = crate::run::load_unchecked(&args.file).map_err(anyhow::Error::msg)?;
    if args.pii {
        return print_pii(&topology.pii, args.json);
    }
    let g = &topology.lineage;
    let query = match (&args.upstream, &args.impact) {
        (Some(f), _) => Some((f, g.upstream(f), "comes from")),
        (None, Some(f)) => Some((f, g.impact(f), "reaches")),
        (None, None) => None,
    };
    let Some((field, reached, verb)) = query else {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(g)?);
        } else {
            print_edges(g);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let reached = match reached {
        Ok(r) => r,
        Err(why) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reached)?);
    } else if reached.is_empty() {
        outln!("{field} {verb} no other field");
    } else {
        print_reached(field, verb, &reached);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_edges(g: &Graph) {
    let width = g
        .edges
        .iter()
        .map(|e| e.from.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let to_width = g.edges.iter().map(|e| e.to.len()).max().unwrap_or(2).max(2);
    outln!("{:width$}  {:to_width$}  {:12}  via", "from", "to", "use");
    for e in &g.edges {
        let note = e
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        outln!(
            "{:width$}  {:to_width$}  {:12}  {}{note}",
            e.from,
            e.to,
            e.how.as_str(),
            e.via
        );
    }
}

fn print_reached(field: &str, verb: &str, reached: &[Reached]) {
    outln!("{field} {verb}:");
    let width = reached
        .iter()
        .map(|r| r.field.len())
        .max()
        .unwrap_or(5)
        .max(5);
    outln!("  {:width$}  {:12}  path", "field", "use");
    for r in reached {
        outln!(
            "  {:width$}  {:12}  {}",
            r.field,
            r.how.as_str(),
            r.path.join(" → ")
        );
    }
}

fn print_pii(p: &Policy, json: bool) -> anyhow::Result<ExitCode> {
    let refused = p.sinks.values().flatten().any(|r| !r.allowed);
    if json {
        outln!("{}", serde_json::to_string_pretty(p)?);
    } else if p.declared.is_empty() {
        outln!("no field is declared PII (sources.X.pii, topics.X.pii)");
    } else {
        let declared: Vec<String> = p
            .declared
            .iter()
            .map(|(f, key)| format!("{f} ({key})"))
            .collect();
        outln!("declared PII: {}", declared.join(", "));
        for sink in p.allowed.keys() {
            let received = p.sinks.get(sink).map(Vec::as_slice).unwrap_or_default();
            if received.is_empty() {
                outln!("sinks.{sink}: receives no PII");
                continue;
            }
            outln!("sinks.{sink}:");
            let width = received
                .iter()
                .map(|r| r.field.len())
                .max()
                .unwrap_or(5)
                .max(5);
            outln!("  {:width$}  {:7}  path", "field", "allowed");
            for r in received {
                let allowed = if r.allowed { "yes" } else { "NO" };
                outln!("  {:width$}  {:7}  {}", r.field, allowed, r.route());
            }
        }
    }
    if refused {
        eprintln!("error: a sink receives PII it does not allow (allow_pii); `hifi validate` and `hifi run` refuse this pipeline");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
