//! A mesh of real `echomesh-node` processes on 127.0.0.1, for `echomeshctl bench`: each node in
//! its own data directory under a temporary directory, linked through the admin API exactly as
//! an operator links nodes, measured through `/metrics` (and `/proc` for their CPU time). The
//! processes are killed when the mesh is dropped (their data is thrown away with the temporary
//! directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use echomesh_client::identity::NodeId;
use echomesh_proto::admin::{self, NeighborAddRequest, NeighborInfo, RuntimeInfo};

use crate::admin_client::AdminClient;

/// How long a node may take to write its `runtime.json`, and a mesh to bring its links up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Ozone replication of the bench nodes unless a bench sets it (the shipped defaults).
pub const BENCH_REPLICAS: usize = 2;
pub const BENCH_WRITE_QUORUM: usize = 2;

/// The configuration section that sets a bench node's ozone replication and per-ozone
/// message quota.
pub fn ozone_config(replicas: usize, write_quorum: usize, max_messages: u64) -> String {
    format!(
        "[ozone]\nreplicas = {replicas}\nwrite_quorum = {write_quorum}\n\
         max_messages_per_ozone = {max_messages}\n"
    )
}

/// Settings every bench node runs with: rate limits and queues out of the way, so the figures
/// are those of the forwarding path; everything else is the shipped default.
const BENCH_CONFIG: &str = r#"cluster = "bench"

[limits]
neighbor_queue_bytes = 67108864
client_queue_bytes = 67108864

[limits.client_rate]
packets_per_sec = 10000000
bytes_per_sec = 4294967296

[limits.neighbor_rate]
packets_per_sec = 10000000
bytes_per_sec = 4294967296
"#;

/// The `echomesh-node` to run: `explicit` (`--node-bin`), else the one installed next to this
/// `echomeshctl`.
pub fn node_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--node-bin {}: no such file", p.display());
    }
    let me = std::env::current_exe().context("finding this program's path")?;
    let next_to_me = me.with_file_name("echomesh-node");
    if next_to_me.is_file() {
        return Ok(next_to_me);
    }
    bail!(
        "no echomesh-node next to {} (build it with `cargo build --release -p echomesh-node`, \
         or pass --node-bin PATH)",
        me.display()
    )
}

pub struct LocalNode {
    child: tokio::process::Child,
    pub runtime: RuntimeInfo,
    pub id: NodeId,
    pub admin: AdminClient,
}

impl LocalNode {
    pub fn quic_addr(&self) -> SocketAddr {
        self.runtime.quic
    }

    /// `HOST:PORT#FINGERPRINT`, as a neighbor spec.
    pub fn spec(&self) -> String {
        format!("{}#{}", self.runtime.quic, self.runtime.fingerprint)
    }

    /// The sum of all series of metric `name` (all label values) in `/metrics`.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.admin.text("/metrics").await?;
        Ok(sum_metric(&text, name))
    }
}

pub struct LocalMesh {
    pub nodes: Vec<LocalNode>,
    _dir: tempfile::TempDir,
}

impl LocalMesh {
    /// Start `n` nodes from `bin` with `extra` flags each, link them as `edges` (both ends pin
    /// each other, origin `admin`) and wait until every link is up and every node's map of
    /// the mesh shows every link (lazy push plans its trees from it).
    pub async fn start_with(
        bin: &Path,
        n: usize,
        edges: &[(usize, usize)],
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_configured(bin, n, edges, extra, |_| String::new()).await
    }

    /// [`LocalMesh::start_with`], with TOML appended to node `i`'s bench configuration by
    /// `config(i)` (e.g. an Echo listener on one node).
    pub async fn start_configured(
        bin: &Path,
        n: usize,
        edges: &[(usize, usize)],
        extra: &[String],
        config: impl Fn(usize) -> String,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let file = dir.path().join(format!("bench{i}.toml"));
            std::fs::write(&file, format!("{BENCH_CONFIG}\n{}", config(i)))
                .with_context(|| format!("writing {}", file.display()))?;
            let data = dir.path().join(format!("node{i}"));
            let node = spawn(bin, &file, &data, extra)
                .await
                .with_context(|| format!("starting node {i}"))?;
            nodes.push(node);
        }
        let mesh = LocalMesh { nodes, _dir: dir };
        for &(i, j) in edges {
            for (x, y) in [(i, j), (j, i)] {
                let spec = mesh.nodes[y].spec();
                let _: NeighborInfo = mesh.nodes[x]
                    .admin
                    .post(admin::PATH_NEIGHBORS, &NeighborAddRequest { spec })
                    .await
                    .with_context(|| format!("linking node {x} to node {y}"))?;
            }
        }
        mesh.wait_links_up(edges.len() * 2).await?;
        mesh.wait_map(edges.len()).await?;
        Ok(mesh)
    }

    /// Wait until every node's topology map shows `links` links up.
    async fn wait_map(&self, links: usize) -> anyhow::Result<()> {
        let t0 = Instant::now();
        for n in &self.nodes {
            loop {
                let map: admin::TopologyView = n.admin.get(admin::PATH_TOPOLOGY).await?;
                if map.links.iter().filter(|l| l.state == "up").count() == links {
                    break;
                }
                if t0.elapsed() > START_TIMEOUT {
                    bail!(
                        "the nodes' maps did not show all {links} links within {} s",
                        START_TIMEOUT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn wait_links_up(&self, want: usize) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let mut up = 0;
            for n in &self.nodes {
                let list: Vec<NeighborInfo> = n.admin.get(admin::PATH_NEIGHBORS).await?;
                up += list.iter().filter(|x| x.state == "up").count();
            }
            if up == want {
                return Ok(());
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "only {up} of {want} link ends came up within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of metric `name` over all nodes.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for n in &self.nodes {
            total += n.metric_sum(name).await?;
        }
        Ok(total)
    }

    /// CPU time (user and system) the node processes have used so far, summed.
    /// (From /proc, in clock ticks: `process_cpu_seconds_total` counts whole seconds.)
    pub fn cpu(&self) -> anyhow::Result<CpuSample> {
        let mut nodes_s = 0.0;
        for n in &self.nodes {
            let pid = n
                .child
                .id()
                .ok_or_else(|| anyhow!("a bench node has exited"))?;
            nodes_s += cpu_seconds(procfs::process::Process::new(pid as i32))
                .with_context(|| format!("reading the CPU time of node process {pid}"))?;
        }
        Ok(CpuSample {
            nodes_s,
            client_s: cpu_seconds(procfs::process::Process::myself())
                .context("reading the bench's own CPU time")?,
            at: Instant::now(),
        })
    }

    /// A metric over every node, summed per value of `label` (values that are 0 left out).
    pub async fn metric_by(
        &self,
        name: &str,
        label: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for n in &self.nodes {
            let text = n.admin.text("/metrics").await?;
            for (value, v) in by_label(&text, name, label) {
                *out.entry(value).or_insert(0) += v as u64;
            }
        }
        out.retain(|_, v| *v > 0);
        Ok(out)
    }
}

/// CPU time used by the nodes and by this process (the bench's clients) at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    nodes_s: f64,
    client_s: f64,
    at: Instant,
}

/// CPU spent between two samples, per operation: it says how many cores a target rate needs
/// (on a shared machine it moves too, less than a rate within one series).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuCost {
    /// CPU µs of all node processes together, per operation.
    pub nodes_us: f64,
    /// CPU µs of the bench's own process (its clients), per operation.
    pub client_us: f64,
    /// Cores busy on average over the interval (nodes and clients).
    pub cores_busy: f64,
}

impl CpuSample {
    /// The cost of `ops` operations done since `earlier`.
    pub fn since(&self, earlier: &CpuSample, ops: u64) -> CpuCost {
        let ops = ops.max(1) as f64;
        let nodes = (self.nodes_s - earlier.nodes_s).max(0.0);
        let client = (self.client_s - earlier.client_s).max(0.0);
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        CpuCost {
            nodes_us: nodes * 1e6 / ops,
            client_us: client * 1e6 / ops,
            cores_busy: (nodes + client) / wall,
        }
    }
}

/// A process's CPU time (user and system) so far, in seconds.
fn cpu_seconds(p: procfs::ProcResult<procfs::process::Process>) -> procfs::ProcResult<f64> {
    let st = p?.stat()?;
    Ok((st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64)
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            // Throw-away nodes: no drain, no graceful stop needed.
            let _ = n.child.start_kill();
        }
    }
}

async fn spawn(
    bin: &Path,
    config: &Path,
    data: &Path,
    extra: &[String],
) -> anyhow::Result<LocalNode> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let log = data.join("node.log");
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(bin);
    // The node must not pick up the caller's own node settings (ECHOMESH_* are config).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ECHOMESH_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let runtime_file = data.join("runtime.json");
    let t0 = Instant::now();
    let runtime = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "echomesh-node exited ({status}) before it was up; its log:\n{}",
                tail(&log)
            );
        }
        if let Ok(text) = std::fs::read_to_string(&runtime_file) {
            if let Ok(info) = serde_json::from_str::<RuntimeInfo>(&text) {
                if info.pid == pid {
                    break info;
                }
            }
        }
        if t0.elapsed() > START_TIMEOUT {
            bail!(
                "echomesh-node wrote no runtime.json within {} s; its log:\n{}",
                START_TIMEOUT.as_secs(),
                tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id: NodeId = runtime
        .fingerprint
        .parse()
        .map_err(|e| anyhow!("runtime.json of {}: {e}", data.display()))?;
    let admin = AdminClient::new(
        &format!("http://{}", runtime.admin),
        &data.join("admin.token"),
    )?;
    Ok(LocalNode {
        child,
        runtime,
        id,
        admin,
    })
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sum the samples of metric `name` in Prometheus text format (every label set).
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The samples of `name`, each with the value of its `label` (samples without it left out).
fn by_label(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|l| {
            let labels = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.rsplit_once("} ")?;
            let start = labels.find(&key)? + key.len();
            let end = labels[start..].find('"')? + start;
            Some((labels[start..end].to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_split_by_one_label() {
        let text = "# TYPE x_total counter\nx_total{reason=\"a\",kind=\"p\"} 2\n\
                    x_total{kind=\"q\",reason=\"b\"} 3\nx_total 1\ny_total{reason=\"a\"} 9\n";
        assert_eq!(
            super::by_label(text, "x_total", "reason"),
            vec![("a".to_string(), 2.0), ("b".to_string(), 3.0)]
        );
    }

    #[test]
    fn metric_sums_cover_every_label_set_and_nothing_else() {
        let text = "# HELP x_total a\n# TYPE x_total counter\nx_total{reason=\"a\"} 2\n\
                    x_total{reason=\"b\"} 3\nx_total_other 100\nx_total 1\n";
        assert_eq!(super::sum_metric(text, "x_total"), 6.0);
        assert_eq!(super::sum_metric(text, "missing"), 0.0);
    }
}
