//! Nodes as separate hosts: one Linux network namespace per node, veth pairs on a bridge in a
//! hub namespace, and a veth into this (the test's) namespace for clients and the admin API.
//! Faults are nftables rules inside the node namespaces: partitions (also one-way) drop by
//! source address, loss drops a random share (`numgen random`) of UDP between nodes.
//!
//! Addresses (`K` is the lab's number): node `i` is `10.47.K.(i+1)`, this namespace is
//! `10.47.K.254` (clients, admin) and `10.47.K.253` (delay proxies). Nothing else is touched.
//! UDP segmentation offload is turned off on the node veths, so that a loss rule drops single
//! datagrams, not whole GSO batches.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct Netns {
    /// Drops counted by rules that were flushed since (so that proof of a fault survives a heal).
    flushed_drops: std::sync::atomic::AtomicU64,
    k: u8,
    hub: String,
    nodes: Vec<String>,
    host_if: String,
}

/// Run a command; its stderr as the error.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces of chaos labs whose process is gone (a crashed or killed earlier run).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("emc") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Netns {
    /// Build the network for `n` nodes, or say why it cannot be built here.
    pub fn create(k: u8, n: usize) -> Result<Netns, String> {
        for tool in ["ip", "nft", "ethtool"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        remove_stale();
        let pid = std::process::id();
        let host_if = format!("emh{k}");
        let _ = run(&["ip", "link", "del", &host_if]);
        let mut net = Netns {
            flushed_drops: Default::default(),
            k,
            hub: format!("emc{pid}-{k}-hub"),
            nodes: (0..n).map(|i| format!("emc{pid}-{k}-n{i}")).collect(),
            host_if,
        };
        net.build().inspect_err(|_| net.destroy())?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub.clone();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for (i, ns) in self.nodes.clone().iter().enumerate() {
            let port = format!("p{i}");
            let ip = format!("{}/24", self.node_ip(i));
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            run(&[
                "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
            ])?;
            run(&["ip", "-n", ns, "addr", "add", &ip, "dev", "eth0"])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            // QUIC sends UDP GSO batches; on a veth a batch would cross (and be dropped by a
            // loss rule) as one packet. Segment before the veth so loss hits datagrams.
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "ethtool",
                "-K",
                "eth0",
                "tx-udp-segmentation",
                "off",
            ])?;
            nft(
                ns,
                "add table inet chaos\n\
                 add chain inet chaos input { type filter hook input priority 0 ; policy accept ; }\n\
                 add chain inet chaos block\n\
                 add chain inet chaos output { type filter hook output priority 0 ; policy accept ; }\n\
                 add chain inet chaos block\n\
                 add chain inet chaos loss\n\
                 add chain inet chaos closs\n\
                 add rule inet chaos input jump block\n\
                 add rule inet chaos input jump loss\n\
                 add rule inet chaos input jump closs\n\
                 add rule inet chaos output jump closs\n",
            )?;
        }
        let h = self.host_if.clone();
        run(&[
            "ip", "link", "add", &h, "type", "veth", "peer", "name", "host", "netns", &hub,
        ])?;
        run(&[
            "ip", "-n", &hub, "link", "set", "host", "master", "br0", "up",
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.host_ip()),
            "dev",
            &h,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.proxy_ip()),
            "dev",
            &h,
        ])?;
        run(&["ip", "link", "set", &h, "up"])?;
        Ok(())
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 47, self.k, i as u8 + 1)
    }

    /// This namespace's address on the lab network: clients and admin calls come from here.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 47, self.k, 254)
    }

    /// The delay proxies' address (subject to loss rules, unlike client traffic).
    pub fn proxy_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 47, self.k, 253)
    }

    /// Drop everything `to` receives from `from` (one direction of a partition).
    pub fn block(&self, from: usize, to: usize) -> Result<(), String> {
        nft(
            &self.nodes[to],
            &format!(
                "add rule inet chaos block ip saddr {} counter drop\n",
                self.node_ip(from)
            ),
        )
    }

    /// Before `chain` is flushed: add what its rules counted to the running total.
    fn keep_counts(&self, chain: &str) {
        let now: u64 = (0..self.nodes.len())
            .map(|i| self.rule_drops(i, chain))
            .sum();
        self.flushed_drops
            .fetch_add(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Remove every partition rule.
    pub fn unblock_all(&self) -> Result<(), String> {
        self.keep_counts("block");
        for ns in &self.nodes {
            nft(ns, "flush chain inet chaos block\n")?;
        }
        Ok(())
    }

    /// Drop `pct` % of the UDP datagrams each node receives from anything but the clients.
    pub fn set_loss(&self, pct: u32) -> Result<(), String> {
        self.keep_counts("loss");
        for ns in &self.nodes {
            let mut script = "flush chain inet chaos loss\n".to_string();
            if pct > 0 {
                script.push_str(&format!(
                    "add rule inet chaos loss meta l4proto udp ip saddr != {} numgen random mod 100 < {pct} counter drop\n",
                    self.host_ip()
                ));
            }
            nft(ns, &script)?;
        }
        Ok(())
    }

    /// Drop `pct` % of the UDP datagrams between each node and the clients, both ways (the
    /// rules sit in the node namespaces: input from the host address, output to it).
    pub fn set_client_loss(&self, pct: u32) -> Result<(), String> {
        self.keep_counts("closs");
        let host = self.host_ip();
        for ns in &self.nodes {
            let mut script = "flush chain inet chaos closs\n".to_string();
            if pct > 0 {
                script.push_str(&format!(
                    "add rule inet chaos closs meta l4proto udp ip saddr {host} numgen random mod 100 < {pct} counter drop\n\
                     add rule inet chaos closs meta l4proto udp ip daddr {host} numgen random mod 100 < {pct} counter drop\n"
                ));
            }
            nft(ns, &script)?;
        }
        Ok(())
    }

    /// Packets the chaos rules dropped, in all namespaces, since the lab started (proof that
    /// a fault bit).
    pub fn dropped(&self) -> u64 {
        self.flushed_drops
            .load(std::sync::atomic::Ordering::Relaxed)
            + (0..self.nodes.len())
                .map(|i| {
                    self.rule_drops(i, "block")
                        + self.rule_drops(i, "loss")
                        + self.rule_drops(i, "closs")
                })
                .sum::<u64>()
    }

    /// What the rules of `chain` in node `i`'s namespace count now.
    fn rule_drops(&self, i: usize, chain: &str) -> u64 {
        let Ok(out) = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[i],
                "nft",
                "list",
                "chain",
                "inet",
                "chaos",
                chain,
            ])
            .output()
        else {
            return 0;
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let at = w.iter().position(|x| *x == "packets")?;
                w.get(at + 1)?.parse::<u64>().ok()
            })
            .sum()
    }

    fn destroy(&self) {
        let _ = run(&["ip", "link", "del", &self.host_if]);
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.destroy();
    }
}
