//! Writes virtio::fuzzing::seed_inputs() into the directory given as the
//! only argument, one file per seed.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/queues".into());
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in virtio::fuzzing::seed_inputs().iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i}"), seed)?;
    }
    Ok(())
}
