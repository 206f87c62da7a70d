//! `hifi lineage FILE`: field-level lineage of a pipeline file, without starting it —
//! every edge, or what one field comes from (`--upstream NODE.FIELD`) or reaches
//! (`--impact NODE.FIELD`); `--json` for tools.

use std::path::PathBuf;
use std::process::ExitCode;

use hifi_pipeline::lineage::{Graph, Reached};

/// Arguments of `hifi lineage`.
#[derive(Debug, clap::Args)]
pub struct LineageArgs {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// What this field (NODE.FIELD, e.g. partner.vat) comes from, through every stage.
    #[arg(long, value_name = "NODE.FIELD", conflicts_with = "impact")]
    upstream: Option<String>,
    /// Every field this one (NODE.FIELD, e.g. api.email) reaches, through every stage.
    #[arg(long, value_name = "NODE.FIELD")]
    impact: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `hifi lineage`.
pub fn run(args: LineageArgs) -> anyhow::Result<ExitCode> {
    let (_, topology) = crate::run::load(&args.file).map_err(anyhow::Error::msg)?;
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
