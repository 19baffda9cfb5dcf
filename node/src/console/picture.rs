//! Pictures drawn on the server as SVG (no JavaScript graph library, works offline): the mesh
//! and invite QR codes. Colours come from classes styled by console.css, so a picture follows
//! the page's theme and needs no inline styles (the CSP forbids them).

use std::fmt::Write;

use crate::topology::TopologyView;

/// Escape text for SVG/XML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The mesh as nodes on a circle (sorted by ID, so the picture is stable while it updates)
/// and links between them, each classed by its state; this node gets a thicker ring.
/// `label` is the accessible description (e.g. "5 nodes, 5 links").
pub fn topology_svg(t: &TopologyView, label: &str) -> String {
    const W: f64 = 640.0;
    const H: f64 = 420.0;
    let n = t.nodes.len().max(1);
    let (cx, cy) = (W / 2.0, H / 2.0);
    let r = if n == 1 { 0.0 } else { 160.0 };
    let pos = |i: usize| {
        let a = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
        (cx + r * a.cos(), cy + r * a.sin())
    };
    let index = |id: &str| t.nodes.iter().position(|x| x.id == id);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="mesh" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(label),
        esc(label)
    );
    for l in &t.links {
        let (Some(a), Some(b)) = (index(&l.a), index(&l.b)) else {
            continue;
        };
        let ((x1, y1), (x2, y2)) = (pos(a), pos(b));
        let _ = write!(
            s,
            r#"<line class="link {}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" data-a="{}" data-b="{}"><title>{} – {}: {}</title></line>"#,
            esc(&l.state),
            esc(&l.a),
            esc(&l.b),
            esc(&l.a),
            esc(&l.b),
            esc(&l.state)
        );
    }
    for (i, node) in t.nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let this = if node.this_node { " self" } else { "" };
        let _ = write!(
            s,
            r#"<g class="node {}{this}" data-id="{}"><circle cx="{x:.1}" cy="{y:.1}" r="18"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text><title>{} ({}) {}</title></g>"#,
            esc(&node.state),
            esc(&node.id),
            y + 36.0,
            esc(&node.id),
            esc(&node.id),
            esc(&node.state),
            esc(&node.addr)
        );
    }
    s.push_str("</svg>");
    s
}

/// `text` as a QR code in SVG, or `None` if it does not fit in one.
pub fn qr_svg(text: &str, label: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::L).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // The renderer's output starts with an XML declaration; inline SVG in HTML must not.
    let start = svg.find("<svg")?;
    Some(svg[start..].replacen(
        "<svg",
        &format!(r#"<svg class="qr" role="img" aria-label="{}""#, esc(label)),
        1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{LinkView, NodeView};

    fn node(id: &str, state: &str, this: bool) -> NodeView {
        NodeView {
            id: id.into(),
            fingerprint: String::new(),
            addr: "127.0.0.1:1".into(),
            cluster: "c".into(),
            software: String::new(),
            protocol: 3,
            state: state.into(),
            last_heard_secs: 0,
            this_node: this,
        }
    }

    #[test]
    fn the_picture_has_every_node_and_link_classed_by_state() {
        let t = TopologyView {
            nodes: vec![node("A", "up", true), node("B<", "failed", false)],
            links: vec![LinkView {
                a: "A".into(),
                b: "B<".into(),
                state: "down".into(),
                rtt_ms: None,
                mode: crate::echo::EchoMode::Full,
                reported_by: "A".into(),
            }],
        };
        let svg = topology_svg(&t, "2 nodes");
        assert!(svg.contains(r#"class="node up self" data-id="A""#), "{svg}");
        assert!(
            svg.contains(r#"class="node failed" data-id="B&lt;""#),
            "{svg}"
        );
        assert!(svg.contains(r#"class="link down""#), "{svg}");
        assert!(!svg.contains("B<"), "escaped");
        let qr = qr_svg("EM1-abc", "QR").unwrap();
        assert!(qr.starts_with(r#"<svg class="qr""#), "{qr}");
    }
}
