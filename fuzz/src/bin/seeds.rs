//! Writes each target's starting inputs, real encodings, to `<dir>/<target>/`:
//! `seeds <dir>`. Not a fuzz target.

use std::{fs, path::Path};

use ringrun_collectives::fuzzing;
use ringrun_fuzz as f;
use ringrun_runtime::{
    checkpoint::Store, control::Completion, member::EpochAnnotation, progress::Report,
};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: seeds <dir>");
    let dir = Path::new(&dir);
    let write = |target: &str, seeds: Vec<Vec<u8>>| -> std::io::Result<()> {
        let d = dir.join(target);
        fs::create_dir_all(&d)?;
        for (i, s) in seeds.iter().enumerate() {
            fs::write(d.join(format!("seed-{i}")), s)?;
        }
        Ok(())
    };
    write("frame", vec![f::frame_seed(), Vec::new()])?;
    write("membership", vec![f::membership_seed(), vec![0; 64]])?;
    let codec = f::control_codec();
    let report = Report {
        member: Some(f::ME),
        step: 12,
        ..Report::default()
    };
    let completion = Completion {
        step: 99,
        digest: [1, 2],
    };
    let annotation = EpochAnnotation {
        epoch: 3,
        ranks: vec![f::ME],
    };
    write(
        "control",
        vec![
            f::unsealed_seed(&codec.seal_exited(f::ME)),
            f::unsealed_seed(&codec.seal_report_request(4)),
            f::unsealed_seed(&codec.seal_report(&report)),
            f::unsealed_seed(&codec.seal_completed(completion)),
            annotation.encode(),
        ],
    )?;
    let scratch = std::env::temp_dir().join(format!("ringrun-fuzz-seeds-{}", std::process::id()));
    let store = Store::open(&scratch, 1).expect("a scratch directory");
    let path = store.save(7, b"some state", true).expect("a checkpoint");
    let mut file = vec![1];
    file.extend(fs::read(path)?);
    let _ = fs::remove_dir_all(&scratch);
    write("checkpoint", vec![file])?;
    let (signed, file_len) = fuzzing::shm_segment_example();
    let mut header = vec![1];
    header.extend(file_len.to_le_bytes());
    header.extend(signed);
    write("shm_segment", vec![header])?;
    write("handshake", vec![fuzzing::handshake_example()])?;
    Ok(())
}
