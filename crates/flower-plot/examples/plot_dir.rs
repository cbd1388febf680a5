//! Renders `DIR/history.json` to `DIR/history.png` and `DIR/history.svg`:
//! `cargo run -p flower-plot --example plot_dir -- DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: plot_dir DIR")?;
    let files = flower_plot::plot_output_dir(std::path::Path::new(&dir))?;
    println!("{} {}", files.png.display(), files.svg.display());
    Ok(())
}
