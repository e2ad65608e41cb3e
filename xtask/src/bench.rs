//! `cargo xtask bench`: benchmarks (being written).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("no benchmark yet")
}
