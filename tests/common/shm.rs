//! Shared-memory segments left in `/dev/shm`: names carry the creating pid
//! (`ringrun-<pid>-<random>`), and set-up unlinks them, so none may outlive its process.

/// Segments of the processes `pids`.
pub fn segments_of(pids: &[u32]) -> Vec<String> {
    let prefixes: Vec<String> = pids.iter().map(|p| format!("ringrun-{p}-")).collect();
    names()
        .into_iter()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .collect()
}

/// Segments whose process is gone (other tests running beside one may hold segments of their
/// own, briefly, during set-up; those processes are alive).
pub fn segments_of_dead_processes() -> Vec<String> {
    names()
        .into_iter()
        .filter(|n| {
            let pid = n.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        })
        .collect()
}

fn names() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("ringrun-"))
                .collect()
        })
        .unwrap_or_default()
}
