//! Writes the well-formed seed inputs of both targets under the corpus
//! directory given as the only argument (default `corpus`).

fn main() -> std::io::Result<()> {
    let root = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    for (target, seeds) in [
        ("queues", virtio::fuzzing::seed_inputs()),
        ("mmio", virtio::fuzzing::mmio_seed_inputs()),
    ] {
        let dir = format!("{root}/{target}");
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(format!("{dir}/seed-{i}"), seed)?;
        }
    }
    Ok(())
}
