//! The autoscaling signals of `/v1/scale` as gauges, for a Kubernetes HPA (external
//! metric through the Prometheus adapter) or KEDA's Prometheus scaler.

use hifi_pipeline::scale::{NodeScale, Scale};

use super::{Families, Kind, Labels};

/// One gauge per node of `f` (nodes where it is unknown are left out).
fn per_node(nodes: &[NodeScale], f: impl Fn(&NodeScale) -> Option<f64>) -> Vec<(Labels, f64)> {
    nodes
        .iter()
        .filter_map(|n| Some((vec![("node", n.node.clone())], f(n)?)))
        .collect()
}

pub(super) fn add(out: &mut Families, scale: &Scale) {
    let nodes = scale.nodes();
    let g = Kind::Gauge;
    out.add(
        "hifi_node_input_records_per_second",
        "Records per second arriving in a node's input over the last 10 s (every process of the node)",
        g,
        per_node(&nodes, |n| n.rate_in.s10),
    );
    out.add(
        "hifi_node_finished_records_per_second",
        "Records per second a node finished (committed past) over the last 10 s (every process of the node)",
        g,
        per_node(&nodes, |n| n.rate_out.s10),
    );
    out.add(
        "hifi_node_busy_ratio",
        "Share of the last 10 s a node's readers in this process spent not waiting for input (1: it cannot keep up)",
        g,
        per_node(&nodes, |n| n.busy_ratio),
    );
    out.add(
        "hifi_node_sustainable_records_per_second",
        "Records per second one replica of a node sustains: [scale] ratings, or measured as its read rate divided by its busy ratio",
        g,
        per_node(&nodes, |n| n.sustainable_rate_per_replica),
    );
    out.add(
        "hifi_node_recommended_replicas",
        "Replicas a node needs for its input rate and backlog with headroom, up at once and down one at a time after scale_down_after (GET /v1/scale says why)",
        g,
        per_node(&nodes, |n| Some(f64::from(n.recommended_replicas))),
    );
}
