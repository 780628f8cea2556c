//! Network namespaces for fault tests: member namespaces joined by veth pairs to bridges in a
//! hub namespace. Two bridges can be joined by a veth pair, so that cutting it splits the members
//! into two internally connected halves.
//!
//! ```text
//!  <tag>m0 (10.214.0.1) --eth0==<tag>v0--+-- br0 --<tag>la==<tag>lb-- br1 --+-- <tag>v2==eth0-- <tag>m2
//!  <tag>m1 (10.214.0.2) --eth0==<tag>v1--+          (in <tag>hub)           +-- ...
//! ```
//!
//! Every name carries the caller's tag (include the pid), the addresses exist only inside these
//! namespaces, and dropping [`Net`] kills whatever runs in them and deletes them. Needs root and
//! `ip netns`; [`Net::build`]'s error is the reason to skip.

use std::process::{Command, Stdio};

/// Runs `ip args...`; the error carries the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The namespaces of one test.
pub struct Net {
    tag: String,
    hub: String,
    /// Which bridge each member hangs on.
    sides: Vec<u8>,
    /// Member namespace names, by member index.
    pub members: Vec<String>,
}

impl Net {
    /// Builds `sides.len()` member namespaces; member `i` hangs off bridge `sides[i]` (0 or 1).
    pub fn build(tag: &str, sides: &[u8]) -> Result<Net, String> {
        if effective_uid() != Some(0) {
            return Err("not root".into());
        }
        let hub = format!("{tag}hub");
        ip(&["netns", "add", &hub])?;
        let mut net = Net {
            tag: tag.into(),
            hub: hub.clone(),
            sides: sides.to_vec(),
            members: Vec::new(),
        };
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for br in ["br0", "br1"] {
            ip(&["-n", &hub, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", br, "up"])?;
        }
        let (la, lb) = (format!("{tag}la"), format!("{tag}lb"));
        ip(&[
            "-n", &hub, "link", "add", &la, "type", "veth", "peer", "name", &lb,
        ])?;
        for (end, br) in [(&la, "br0"), (&lb, "br1")] {
            ip(&["-n", &hub, "link", "set", end, "master", br])?;
            ip(&["-n", &hub, "link", "set", end, "up"])?;
        }
        for (i, side) in sides.iter().enumerate() {
            let member = format!("{tag}m{i}");
            ip(&["netns", "add", &member])?;
            net.members.push(member.clone());
            let hub_end = net.veth(i);
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &member,
            ])?;
            ip(&[
                "-n",
                &hub,
                "link",
                "set",
                &hub_end,
                "master",
                &format!("br{side}"),
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
            ip(&["-n", &member, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &member,
                "addr",
                "add",
                &format!("{}/24", addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &member, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Cuts (`up = false`) or heals member `i`'s link to its bridge.
    pub fn set_member_link(&self, i: usize, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub, "link", "set", &self.veth(i), state])
    }

    /// Delays every frame to and from member `i` by `ms` milliseconds, each way (what
    /// `tc netem delay` does, without needing it): a forwarder (`delay_link.py`, in the hub)
    /// between two taps takes the member's place on its bridge. It runs until the net is
    /// dropped.
    pub fn delay_member_link(&self, i: usize, ms: u32) -> Result<(), String> {
        let (a, b, bridge) = (
            format!("{}d{i}a", self.tag),
            format!("{}d{i}b", self.tag),
            format!("{}dbr{i}", self.tag),
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/common/delay_link.py");
        let mut forwarder = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hub,
                "python3",
                script,
                &a,
                &b,
                &ms.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {script}: {e}"))?;
        let mut ready = String::new();
        let out = forwarder.stdout.take().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready)
            .map_err(|e| format!("{script}: {e}"))?;
        if ready.trim() != "ready" {
            return Err(format!("{script} did not start: {:?}", forwarder.wait()));
        }
        let side = format!("br{}", self.sides[i]);
        let hub = self.hub.as_str();
        ip(&["-n", hub, "link", "add", &bridge, "type", "bridge"])?;
        ip(&["-n", hub, "link", "set", &bridge, "up"])?;
        for (tap, to) in [(&a, side.as_str()), (&b, bridge.as_str())] {
            ip(&["-n", hub, "link", "set", tap, "master", to])?;
            ip(&["-n", hub, "link", "set", tap, "up"])?;
        }
        ip(&["-n", hub, "link", "set", &self.veth(i), "master", &bridge])
    }

    /// Cuts or heals the link between the two bridges.
    pub fn set_bridge_link(&self, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("{}la", self.tag),
            state,
        ])
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.members.iter().chain(std::iter::once(&self.hub))
    }
}

/// Member `i`'s address (inside its namespace only).
pub fn addr(i: usize) -> String {
    format!("10.214.0.{}", i + 1)
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.names() {
            // Only processes inside the namespaces this test created.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        for ns in self.names() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Prints why a namespace test is skipped, or fails if `RINGRUN_NETNS_REQUIRE=1`.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("RINGRUN_NETNS_REQUIRE").is_ok_and(|v| v == "1") {
        panic!("RINGRUN_NETNS_REQUIRE=1 but: {reason}");
    }
    println!("SKIP: {reason}");
}
